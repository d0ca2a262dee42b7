//! trueup's own state: evaluation runs and the violation ledger.
//!
//! Architecture invariant: only this module reads or writes trueup's tables. One interface
//! ([`Store`]), two backends that share their SQL text (see `ledger.rs`): SQLite, embedded and
//! the default, and PostgreSQL, for production and several replicas. Each has its own
//! migrations under `migrations/`, applied when the store opens.

mod actions;
mod alerts;
mod incidents;
mod ledger;
mod log_days;
mod logs;
mod notices;
mod outcomes;
mod plans;
mod postgres;
mod replicas;
mod segments;
mod sessions;
mod sqlite;
mod trace;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::SecretUrl;
use crate::domain::{
    InvariantName, LedgerChange, RunId, RunStats, RunStatus, Violation, ViolationKind,
    ViolationStatus,
};

pub use actions::ActionStore;
pub use alerts::AlertStore;
pub use incidents::{
    FrozenReport, IncidentClosure, IncidentEvent, IncidentRecord, IncidentStore, NewIncident,
};
pub use log_days::LogDays;
pub use logs::{EventLogStore, LogCounts, LoggedEvent, RetentionNeeds};
pub use notices::{NoticeGroup, NoticeStore, QueuedNotice, Release, SilenceExpiry, WaitingNotice};
pub use outcomes::{
    DecidedOutcome, EventLine, HealedOutcome, OutcomeCounts, OutcomeQuery, OutcomeRecord,
    OutcomeStore, OutcomeWrite, next_after,
};
pub use plans::{ActionRecord, Approval, NewAction, NewPlan, PlanRecord, PlanStore, Transition};
pub use postgres::PgStore;
pub use replicas::ReplicaStore;
pub use segments::{SegmentClaim, SegmentRecord, SegmentStatus, SegmentStore};
pub use sessions::{SessionRecord, SessionStore};
pub use sqlite::SqliteStore;
pub use trace::{Redelivery, TraceStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {url}: {message}")]
    Open { url: String, message: String },
    #[error("cannot migrate the store {url}: {message}")]
    Migrate { url: String, message: String },
    #[error("store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("store: run {0} does not exist or is no longer running")]
    NoSuchRun(i64),
    #[error(
        "store: the tick this run answers is no longer held by this replica (its lease ran out and another replica took it over); the result is dropped"
    )]
    LostTick,
    #[error(
        "store: segment {segment} of run {run} is no longer held by this worker (its lease ran out and another worker claimed it); its result is dropped"
    )]
    LostSegment { run: i64, segment: u32 },
    #[error("store: recording the result panicked (a bug in trueup; please report it): {0}")]
    Panicked(String),
}

/// Which statuses a listing wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatusFilter {
    /// Open or reopened: what still needs attention.
    #[default]
    Active,
    Only(ViolationStatus),
    All,
}

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct RunRecord {
    pub id: RunId,
    pub invariant: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: RunStatus,
    pub stats: RunStats,
    pub change: LedgerChange,
    pub error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ViolationRecord {
    pub id: i64,
    pub fingerprint: String,
    pub invariant: String,
    pub kind: String,
    pub key: serde_json::Value,
    pub status: ViolationStatus,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub event_at: Option<DateTime<Utc>>,
    pub times_reopened: i64,
    pub first_run_id: RunId,
    pub last_run_id: RunId,
    pub evidence: serde_json::Value,
}

/// Which page of the audit log, in which order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditPage {
    /// Oldest first, the entries after this id (all when `None`): for reading on, or
    /// following the log.
    After(Option<i64>),
    /// Newest first, the entries before this id (the latest when `None`): what just happened.
    Before(Option<i64>),
}

/// Which audit entries a page holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// One target (`plan:7`, `incident:NAME`).
    pub target: Option<String>,
    pub actor: Option<String>,
    /// Decisions only: leaves out each action's own record (`action.<status>`), thousands of
    /// which follow one replay.
    pub decisions_only: bool,
}

impl AuditFilter {
    pub fn target(target: impl Into<String>) -> Self {
        Self {
            target: Some(target.into()),
            ..Self::default()
        }
    }
}

/// Runs as a consistency objective reads them (see [`crate::domain::measure_slo`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SloHistory {
    /// The last completed run before the window: its state holds where the window opens.
    pub seed: Option<crate::domain::SloObservation>,
    /// Completed and failed runs finished in the window, oldest first.
    pub runs: Vec<crate::domain::SloObservation>,
}

/// One entry of the append-only audit log.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// The identity that acted (a token's name, or `cli` / `scheduler`).
    pub actor: String,
    pub action: String,
    pub target: String,
    pub details: serde_json::Value,
}

/// The tick a run answers, and the replica holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickRef {
    pub fire_at: DateTime<Utc>,
    pub owner: String,
}

/// A scheduled evaluation claimed by one replica.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tick {
    pub invariant: String,
    pub fire_at: DateTime<Utc>,
    pub owner: String,
    pub finished: bool,
    pub run_id: Option<i64>,
    /// Claimed from a replica whose lease ran out.
    pub taken_over: bool,
    /// Not run: it came while an earlier tick of the invariant was unfinished.
    pub missed: bool,
}

/// A notification to deliver on one channel.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OutboxMessage {
    /// Stable across retries and restarts: receivers can drop repeats.
    pub dedup_key: String,
    pub channel: String,
    pub payload: serde_json::Value,
}

/// An outbox row claimed for delivery.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OutboxItem {
    pub id: i64,
    pub message: OutboxMessage,
    pub attempts: i64,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ViolationFilter {
    pub invariants: Vec<String>,
    pub status: StatusFilter,
    pub kind: Option<ViolationKind>,
    /// Only violations that this run found new or reopened.
    pub new_in_run: Option<RunId>,
    /// Only violations seen at or after this time (`last_seen >= since`).
    pub since: Option<DateTime<Utc>>,
    /// Only violations first seen before this time (`first_seen < until`).
    pub until: Option<DateTime<Utc>>,
    /// Only violations whose business event happened at or after this (`event_at`).
    pub event_from: Option<DateTime<Utc>>,
    /// Only violations whose business event happened before this.
    pub event_until: Option<DateTime<Utc>>,
    /// Only violations inside an incident's window (see [`IncidentWindow`]).
    pub window: Option<IncidentWindow>,
    /// Keyset pagination: only ids greater than this.
    pub after_id: Option<i64>,
    pub limit: u32,
}

/// An incident's time window. A violation is inside it when its business event happened in
/// the window, or, for a violation without an event time, when trueup first saw it in the
/// window. No `to`: the window is still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncidentWindow {
    pub from: DateTime<Utc>,
    pub to: Option<DateTime<Utc>>,
}

impl IncidentWindow {
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        at >= self.from && self.to.is_none_or(|to| at < to)
    }
}

/// Violations of one invariant, kind and status, counted.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ViolationGroup {
    pub invariant: String,
    pub kind: String,
    pub status: ViolationStatus,
    pub count: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub event_from: Option<DateTime<Utc>>,
    pub event_to: Option<DateTime<Utc>>,
}

/// An invariant's runs since a time: how many, how many failed, the ones that changed the
/// ledger or did not succeed (oldest first, up to a limit), and the latest finished run.
#[derive(Debug, Clone, Default)]
pub struct RunDigest {
    pub total: u64,
    pub failed: u64,
    pub notable: Vec<RunRecord>,
    pub latest: Option<RunRecord>,
    /// The latest run that read every row (`Store::latest_full_run`).
    pub latest_full: Option<RunRecord>,
}

#[async_trait]
pub trait Store:
    PlanStore
    + ActionStore
    + IncidentStore
    + SessionStore
    + ReplicaStore
    + SegmentStore
    + AlertStore
    + NoticeStore
    + EventLogStore
    + LogDays
    + OutcomeStore
    + crate::source::LogReader
    + TraceStore
    + Send
    + Sync
{
    fn backend(&self) -> &'static str;

    /// Records that an evaluation started.
    async fn begin_run(
        &self,
        invariant: &InvariantName,
        at: DateTime<Utc>,
    ) -> Result<RunId, StoreError>;

    /// Stages violations seen by a running evaluation; `first_seq` numbers the first of the
    /// batch in the order seen. Nothing reaches the ledger until [`Store::complete_run`].
    async fn observe(
        &self,
        run: RunId,
        invariant: &InvariantName,
        first_seq: u64,
        batch: &[Violation],
    ) -> Result<(), StoreError>;

    /// Stages keys an incremental run covered (as [`Violation::key_json`] writes them): only
    /// violations on these keys may resolve when it completes.
    async fn cover(&self, run: RunId, keys: &[serde_json::Value]) -> Result<(), StoreError>;

    /// Where the next incremental run of `invariant` starts, as the last completed run left it.
    async fn watermark(
        &self,
        invariant: &InvariantName,
    ) -> Result<Option<crate::domain::Watermark>, StoreError>;

    /// Merges the run's observations into the ledger in one transaction: new violations open,
    /// resolved ones seen again reopen, and (unless the run was truncated) open ones it did not
    /// see resolve — all of them after a full pass, those on the keys it staged with
    /// [`Store::cover`] after an incremental one. The run's marks, if any, become the
    /// invariant's watermark in the same transaction.
    ///
    /// With `tick`, the scheduled tick the run answers is marked finished in the same
    /// transaction, so a replica that dies after this commit leaves nothing to take over, and
    /// one whose lease was taken over cannot commit a second result for the tick.
    async fn complete_run(
        &self,
        run: RunId,
        invariant: &InvariantName,
        stats: &RunStats,
        at: DateTime<Utc>,
        tick: Option<&TickRef>,
    ) -> Result<LedgerChange, StoreError>;

    /// Ends a run that did not complete; its observations are dropped and the ledger is
    /// untouched: a failed evaluation never resolves anything.
    async fn abandon_run(
        &self,
        run: RunId,
        status: RunStatus,
        error: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    async fn violations(
        &self,
        filter: &ViolationFilter,
    ) -> Result<Vec<ViolationRecord>, StoreError>;

    /// The first and the last event time (`event_at`) of the violations the filter matches
    /// (its `limit` and `after_id` are ignored), in one row; `None` when none has one.
    async fn event_span(
        &self,
        filter: &ViolationFilter,
    ) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>, StoreError>;

    /// The event times (`event_at`) of every violation the filter matches (its `limit` and
    /// `after_id` are ignored); violations without one are left out.
    async fn event_times(&self, filter: &ViolationFilter)
    -> Result<Vec<DateTime<Utc>>, StoreError>;

    /// The latest runs, newest first.
    async fn runs(&self, invariant: Option<&str>, limit: u32)
    -> Result<Vec<RunRecord>, StoreError>;

    /// Appends to the audit log; returns the entry's id.
    async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        details: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> Result<i64, StoreError>;

    /// A page of the audit entries `filter` keeps.
    async fn audit_log(
        &self,
        filter: &AuditFilter,
        page: AuditPage,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// What runs of `invariant` say about its consistency objective over `[from, to)`: the
    /// last completed run before `from` and the completed or failed runs finished in it.
    async fn slo_observations(
        &self,
        invariant: &str,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
    ) -> Result<SloHistory, StoreError>;

    /// The latest audit entry of `action` on `target`, if there is one.
    async fn last_audit(
        &self,
        target: &str,
        action: &str,
    ) -> Result<Option<AuditEntry>, StoreError>;

    /// Audit entries for any of `targets` at or after `since`, in order, without the
    /// per-action entries (`action.*`) of plans.
    async fn audit_trail(
        &self,
        targets: &[String],
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// The violations the filter matches (its `limit` and `after_id` ignored), counted by
    /// invariant, kind and status.
    async fn violation_groups(
        &self,
        filter: &ViolationFilter,
    ) -> Result<Vec<ViolationGroup>, StoreError>;

    /// The latest completed run of `invariant` that read every row it reads: succeeded, not
    /// incremental, not over its violation budget. What an incident's verification and the
    /// retention of a log the invariant reads take as evidence.
    async fn latest_full_run(&self, invariant: &str) -> Result<Option<RunRecord>, StoreError>;
    /// The keys of `invariant`'s open violations (as the engine writes them), at most
    /// `limit`: where a checksummed run looks first, since a difference tends to stay until
    /// it is repaired.
    async fn open_keys(
        &self,
        invariant: &str,
        limit: u32,
    ) -> Result<Vec<serde_json::Value>, StoreError>;

    /// The runs of `invariant` started at or after `since`; at most `limit` notable ones.
    async fn run_digest(
        &self,
        invariant: &str,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<RunDigest, StoreError>;

    async fn close(&self);
}

/// Opens the store named by `url` (sqlite:// or postgres://) and applies its migrations.
pub async fn open(url: &SecretUrl) -> Result<Arc<dyn Store>, StoreError> {
    let raw = url.expose();
    if raw.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::open(url).await?))
    } else {
        Err(StoreError::Open {
            url: url.redacted(),
            message: "the store must be sqlite://FILE or postgres://...".into(),
        })
    }
}

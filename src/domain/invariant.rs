use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use super::{
    AlertPolicy, ColumnName, Compensation, HumanDuration, InvariantName, Schedule, SourceName,
    ViolationKind,
};

/// A parsed, validated invariant. Built only by `rules::load`, which reports every problem in
/// the file with its location first.
#[derive(Debug, Clone, PartialEq)]
pub struct Invariant {
    pub name: InvariantName,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub severity: Severity,
    pub schedule: Option<Schedule>,
    /// The column holding when each row's business event happened (payment captured, order
    /// placed). Used for grace and recorded with each violation.
    pub time_column: Option<ColumnName>,
    /// Rows whose time column is newer than now − grace are not yet due: the downstream
    /// system may still be catching up, so they are neither reported nor resolved. Requires
    /// `time_column`.
    pub grace: Option<HumanDuration>,
    /// When its alert fires, holds and repeats.
    pub alert: AlertPolicy,
    /// Channels its notifications go to; `None`: every configured channel.
    pub notify: Option<Vec<String>>,
    /// How many violations `check` prints per invariant.
    pub sample_limit: usize,
    /// How many violations one run stores; beyond it they are counted, not stored.
    pub violation_budget: u64,
    pub spec: InvariantSpec,
    /// How to repair each kind of violation (kinds without an entry are not compensated).
    pub compensate: BTreeMap<ViolationKind, Compensation>,
    /// How to re-deliver a lost upstream event (`missing` violations of a reconcile).
    pub replay: Option<ReplaySpec>,
    /// Its consistency objective, if it declares one.
    pub slo: Option<super::Objective>,
    /// What to do when it fires: linked from every notice.
    pub runbook_url: Option<super::WebUrl>,
    /// Free-form labels (`team: billing`), shown in every notice and carried in webhooks.
    pub labels: BTreeMap<String, String>,
    /// Where it was defined (file and line), for messages.
    pub defined_at: (PathBuf, u64),
}

impl Invariant {
    /// Every side it reads, named as in its file (`left`, `right`, `check`, `transitions`,
    /// `replay.processed`).
    pub fn sides(&self) -> Vec<(&'static str, &QuerySide)> {
        let mut sides: Vec<(&'static str, &QuerySide)> = match &self.spec {
            InvariantSpec::Reconcile(r) => vec![("left", &r.left), ("right", &r.right)],
            InvariantSpec::Check(c) => vec![("check", &c.side)],
            InvariantSpec::Transitions(t) => vec![("transitions", &t.side)],
        };
        if let Some(processed) = self.replay.as_ref().and_then(|r| r.processed.as_ref()) {
            sides.push(("replay.processed", processed));
        }
        sides
    }

    /// Whether a compensation or replay template reads column `column` of the `scope` row
    /// (`left`, `right` or `row`): its values become an action's input, so evidence keeps
    /// them whole rather than capped.
    pub fn template_reads(&self, scope: super::Scope, column: &str) -> bool {
        self.template_fields(scope)
            .iter()
            .any(|f| f.eq_ignore_ascii_case(column))
    }

    /// The columns of the `scope` row that compensation and replay templates read.
    pub fn template_fields(&self, scope: super::Scope) -> Vec<String> {
        let replay = self.replay.iter().flat_map(|r| {
            r.deliver
                .placeholders()
                .into_iter()
                .chain(r.idempotency_key.iter().flat_map(|t| t.placeholders()))
        });
        self.compensate
            .values()
            .flat_map(|c| c.placeholders())
            .chain(replay)
            .filter(|p| p.scope == scope)
            .map(|p| p.field.clone())
            .collect()
    }

    pub fn kind_name(&self) -> &'static str {
        match self.spec {
            InvariantSpec::Check(_) => "check",
            InvariantSpec::Reconcile(_) => "reconcile",
            InvariantSpec::Transitions(_) => "transitions",
        }
    }

    /// What identifies the definition: a hash of everything but where it is written (moving
    /// it in its file changes nothing) and what only notices show (its runbook and labels).
    /// A plan proposed under one definition goes stale when the definition changes.
    pub fn definition_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let placed_nowhere = Invariant {
            defined_at: (PathBuf::new(), 0),
            runbook_url: None,
            labels: BTreeMap::new(),
            ..self.clone()
        };
        hex::encode(Sha256::digest(format!("{placed_nowhere:?}").as_bytes()))
    }

    /// The key columns violations are identified by.
    pub fn key(&self) -> &[ColumnName] {
        match &self.spec {
            InvariantSpec::Check(c) => &c.key,
            InvariantSpec::Reconcile(r) => &r.key,
            InvariantSpec::Transitions(t) => &t.key,
        }
    }

    /// The sources this invariant reads.
    pub fn sources(&self) -> Vec<&SourceName> {
        match &self.spec {
            InvariantSpec::Check(c) => vec![&c.side.source],
            InvariantSpec::Reconcile(r) => vec![&r.left.source, &r.right.source],
            InvariantSpec::Transitions(t) => vec![&t.side.source],
        }
    }
}

/// How to replay lost events: re-deliver the upstream event of each `missing` violation whose
/// event time falls in an operator's window, in event order (per partition).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplaySpec {
    /// One delivery: an `sql` insert or an `http` request (never manual).
    pub deliver: Compensation,
    /// The idempotency key of a delivery (e.g. the upstream event id); default: derived from
    /// the invariant, the violation and the delivery.
    pub idempotency_key: Option<super::Template>,
    /// A left column: events of one partition are delivered in order, one at a time;
    /// partitions proceed concurrently. None: one global order.
    pub partition: Option<ColumnName>,
    /// Windows wider than this need `--wide` and a reason.
    pub max_window: HumanDuration,
    /// Failed deliveries of one event before it is parked and the replay goes on.
    pub attempts: u32,
    /// A read-only lookup that proves an event was already processed downstream (a row for
    /// the key means yes), checked before each delivery in addition to the re-check.
    pub processed: Option<QuerySide>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const NAMES: &'static str = "critical, high, medium or low";

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "critical" => Some(Severity::Critical),
            "high" => Some(Severity::High),
            "medium" => Some(Severity::Medium),
            "low" => Some(Severity::Low),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum InvariantSpec {
    Check(CheckSpec),
    Reconcile(ReconcileSpec),
    Transitions(TransitionsSpec),
}

/// One read-only query (or request) on one source.
#[derive(Debug, Clone, PartialEq)]
pub struct QuerySide {
    pub source: SourceName,
    pub query: super::Read,
}

/// Every row the query returns is a violation, identified by its key columns.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSpec {
    pub side: QuerySide,
    pub key: Vec<ColumnName>,
}

/// How many right rows each left key should have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expect {
    /// One row per key on each side: more is a `duplicate`, none on the right is `missing`.
    #[default]
    ExactlyOne,
    /// One or more right rows per left key (an order and its shipments): no right duplicates.
    AtLeastOne,
    /// Zero or one right row per left key (optional refunds): no `missing`.
    AtMostOne,
}

impl Expect {
    pub const NAMES: &'static str = "exactly_one, at_least_one or at_most_one";

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "exactly_one" => Some(Expect::ExactlyOne),
            "at_least_one" => Some(Expect::AtLeastOne),
            "at_most_one" => Some(Expect::AtMostOne),
            _ => None,
        }
    }

    pub fn right_may_repeat(self) -> bool {
        self == Expect::AtLeastOne
    }

    pub fn right_may_be_absent(self) -> bool {
        self == Expect::AtMostOne
    }
}

/// Two queries matched row by row on a key.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileSpec {
    pub left: QuerySide,
    pub right: QuerySide,
    pub key: Vec<ColumnName>,
    pub expect: Expect,
    /// Columns compared on matched keys; `None` compares every non-key column both sides
    /// return (except the time column and the incremental change columns).
    pub compare: Option<Vec<ColumnName>>,
    /// How the two sides are compared: row by row, or by segment checksums first.
    pub mode: ReconcileMode,
    /// `Some`: scheduled runs read only the rows changed since the last run, with a full
    /// pass now and then.
    pub incremental: Option<Incremental>,
    /// `Some(n)`: a full pass splits the (single, integer) key range into `n` segments that
    /// every replica on the store may claim and evaluate; one run, one ledger change.
    pub segments: Option<u32>,
    /// `Some`: a run compares only the rows whose time column lies within this long before
    /// it began, on both sides, and resolves only violations whose event time does.
    pub window: Option<HumanDuration>,
}

impl ReconcileSpec {
    /// The most segments a run may be split into: each is a row in the store and a claim.
    pub const MAX_SEGMENTS: u64 = 4096;
}

/// A reconcile that reads only what changed: the rows whose change column (an `updated_at`)
/// moved since the last completed run, and on both sides the rows with those keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incremental {
    /// The change column of each side; `None`: that side's own changes (an extra row, an
    /// edit) wait for the next full pass.
    pub left: Option<ColumnName>,
    pub right: Option<ColumnName>,
    /// How far before the last run's watermark a run starts reading: a change committed late
    /// with an earlier timestamp, or a clock behind the others, is still read.
    pub lookback: HumanDuration,
    /// A full pass at least this often (the only way a deleted row is seen).
    pub full_every: HumanDuration,
}

impl Incremental {
    /// `full_every` when the file does not say.
    pub const DEFAULT_FULL_EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

    /// The change column of a side (`Scope::Left` or `Scope::Right`).
    pub fn column(&self, side: super::Scope) -> Option<&ColumnName> {
        match side {
            super::Scope::Left => self.left.as_ref(),
            super::Scope::Right => self.right.as_ref(),
            _ => None,
        }
    }
}

/// How a reconcile compares its sides. Every mode finds the same violations; they differ in
/// what crosses the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReconcileMode {
    /// Checksums where the invariant allows them, both sides hash with PostgreSQL's own
    /// hashes and a sample of segments says they pay, else a stream; the run's stats say
    /// which and why.
    #[default]
    Auto,
    /// Every row of both sides, merged by key.
    Stream,
    /// Segment checksums computed in each database, only differing segments streamed; a run
    /// whose invariant cannot be checksummed fails, saying why.
    Checksum,
}

impl ReconcileMode {
    pub const NAMES: &'static str = "auto, stream or checksum";

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "auto" => Some(Self::Auto),
            "stream" => Some(Self::Stream),
            "checksum" => Some(Self::Checksum),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Stream => "stream",
            Self::Checksum => "checksum",
        }
    }
}

/// A state history (key, state, at) checked against the allowed state changes.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionsSpec {
    pub side: QuerySide,
    pub key: Vec<ColumnName>,
    pub state: ColumnName,
    pub at: ColumnName,
    pub allowed: BTreeMap<String, BTreeSet<String>>,
    /// States an entity may start in; `None` allows any known state.
    pub initial: Option<BTreeSet<String>>,
}

impl TransitionsSpec {
    pub fn is_known_state(&self, state: &str) -> bool {
        self.allowed.contains_key(state) || self.allowed.values().any(|to| to.contains(state))
    }
}

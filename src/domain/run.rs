//! Runs: one evaluation of one invariant, what it measured and how it changed the ledger.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::ViolationKind;

pub type RunId = i64;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// The status as the store wrote it (an unknown one reads as failed).
    pub fn parse(raw: &str) -> Self {
        match raw {
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "cancelled" => RunStatus::Cancelled,
            _ => RunStatus::Failed,
        }
    }
}

/// What an evaluation measured, handed to the store when the run completes.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(default)]
pub struct RunStats {
    pub rows_left: u64,
    pub rows_right: u64,
    /// Every violation seen, stored or not.
    pub observed: u64,
    pub counts: BTreeMap<ViolationKind, u64>,
    /// Rows inside the grace period: neither reported nor resolved.
    pub not_yet_due: u64,
    /// Rows whose key has a NULL: they identify nothing, so they are counted, not compared.
    pub null_keys: u64,
    /// More violations than the budget: only the first ones were stored, and nothing was
    /// resolved (the run cannot tell what it did not store).
    pub truncated: bool,
    /// How a reconcile compared its sides; `None` for other invariants. (Reported by the run,
    /// not kept in the store.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compared: Option<Compared>,
    /// Which rows the run looked at: all of them, or only the keys of changed rows.
    pub coverage: Coverage,
    /// For an incremental reconcile: each side's change mark as the run began, where the
    /// next run starts reading (saved only if this run completes).
    #[serde(skip)]
    pub marks: Option<Marks>,
    /// A run split into segments of its key range: how many, and which replicas evaluated
    /// them. (Reported by the run, not kept in the store.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
}

/// How a split run's segments were shared.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Split {
    pub segments: u32,
    /// The replicas (or CLI processes) that completed segments, each once, sorted.
    pub workers: Vec<String>,
    /// Segments evaluated again after their first worker stopped answering.
    pub taken_over: u32,
}

impl RunStats {
    /// Adds what one segment of a split run measured (each key lies in one segment, so the
    /// run's figures are the sums).
    pub fn absorb(&mut self, segment: &RunStats) {
        self.rows_left += segment.rows_left;
        self.rows_right += segment.rows_right;
        self.observed += segment.observed;
        for (kind, n) in &segment.counts {
            *self.counts.entry(*kind).or_default() += n;
        }
        self.not_yet_due += segment.not_yet_due;
        self.null_keys += segment.null_keys;
        self.truncated |= segment.truncated;
        if let Some(theirs) = &segment.compared {
            let ours = self.compared.get_or_insert_with(|| Compared {
                method: theirs.method,
                ..Compared::default()
            });
            // A run checksummed only if every segment was.
            if theirs.method == CompareMethod::Stream {
                ours.method = CompareMethod::Stream;
            }
            if ours.streamed_because.is_none() {
                ours.streamed_because.clone_from(&theirs.streamed_because);
            }
            ours.segments += theirs.segments;
            ours.segments_streamed += theirs.segments_streamed;
            ours.rows_streamed += theirs.rows_streamed;
        }
    }
}

/// Which rows a run looked at.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase", tag = "pass")]
pub enum Coverage {
    /// Every row the queries return: a violation this run did not see is resolved.
    #[default]
    Full,
    /// Only the keys of rows whose change column reached `since` on a side (an incremental
    /// reconcile): a violation on any other key is left as it was.
    Changed {
        /// The keys read, from both sides' changes.
        keys: u64,
        left_since: Option<DateTime<Utc>>,
        right_since: Option<DateTime<Utc>>,
    },
    /// Only the rows whose time column is at or after `from` (a reconcile's `window`): a
    /// violation resolves only if its event time is too; older ones are left as they were.
    Window { from: DateTime<Utc> },
}

impl Coverage {
    pub fn is_full(&self) -> bool {
        matches!(self, Coverage::Full)
    }

    /// The start of a windowed run's rows.
    pub fn window_from(&self) -> Option<DateTime<Utc>> {
        match self {
            Coverage::Window { from } => Some(*from),
            _ => None,
        }
    }
}

/// Each side's largest change-column value when a run began (`None`: no row, or no change
/// column on that side), under one definition of the invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marks {
    /// [`super::Invariant::definition_hash`]: marks read under another definition of the
    /// queries mean nothing for this one.
    pub definition: String,
    pub left: Option<DateTime<Utc>>,
    pub right: Option<DateTime<Utc>>,
}

/// Where an incremental reconcile's next run starts: the marks of the last completed run and
/// when the last full pass completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub marks: Marks,
    pub full_at: DateTime<Utc>,
}

/// The way a reconcile actually compared its sides (an `auto` one chooses per run).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CompareMethod {
    #[default]
    Stream,
    Checksum,
}

impl CompareMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Checksum => "checksum",
        }
    }
}

/// How a reconcile compared its sides, and what crossed the network.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Compared {
    pub method: CompareMethod,
    /// Why an `auto` reconcile streamed (a column with no checksum form, a sample of
    /// segments that mostly differed, ...); `None` when it checksummed or was told to stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streamed_because: Option<String>,
    /// Segments whose checksums were compared (0 when streamed): the buckets of every
    /// summary, and each range or set of keys totalled whole. And the segments read row by
    /// row: the differing ones at their smallest size, or, where the totals located the
    /// differences, the runs of open violations' keys and the range around a new difference
    /// (adjacent ones are read together, and counted apart).
    pub segments: u64,
    pub segments_streamed: u64,
    /// Rows that crossed the network, both sides (all of them when streamed).
    pub rows_streamed: u64,
}

/// How a completed run changed the ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct LedgerChange {
    pub new: u64,
    pub still_open: u64,
    pub reopened: u64,
    pub resolved: u64,
    /// Open violations the run left as they were, and still open: on keys it did not cover
    /// (an incremental run), past its violation budget, or last seen by a run begun after it.
    pub uncovered: u64,
}

impl LedgerChange {
    /// Violations open after the run.
    pub fn open_after(&self) -> u64 {
        self.new + self.reopened + self.still_open + self.uncovered
    }
}

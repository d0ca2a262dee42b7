//! Checksum mode: each database summarises segments of the key range (row count, sum of row
//! hashes, repeated keys; see `source::checksum`), and only segments whose summaries differ
//! are split again, down to a size where reading them is cheaper than splitting; those are
//! merged row by row, exactly as a full stream would merge them.
//!
//! Why the result is a full stream's: a key lies in exactly one segment. A segment whose two
//! summaries are equal holds the same rows on both sides (the hash forms never hash unequal
//! values alike; the sums collide with a chance of about 2^-64) and no repeated key, so the
//! merge would report nothing there; every other segment is merged. (Where the whole range
//! is totalled first, the same holds of the rest: the whole's totals less those of the keys
//! read, equal on both sides.) Rows with a NULL key are
//! counted, never compared, as in a stream. A side is not read in one snapshot, though: each
//! summary and each segment read is its own statement, so a row changed during the run is
//! seen as it was when its segment was read (as two sides in two databases always are).

use chrono::{DateTime, Utc};

use crate::config::{SourceClass, SourceKind};
use crate::domain::{CompareMethod, Compared, Expect, Invariant, ReconcileMode, ReconcileSpec};
use crate::source::{
    Flavor, KeyRange, KeyRanges, RowHash, SegmentSummary, Source, SourceError, Sources,
    SummaryRequest, Totals, index_of, key_shift,
};

use super::merge;
use crate::engine::{EngineError, Tally, ViolationSink};

/// Segments of the first split of the key range, at least; where few differ, as many as
/// make each about half a leaf (below), at most [`MAX_COARSE_BUCKETS`], so that a differing
/// one is read at once instead of summarised again (a pass over its rows in each database
/// and a round trip: 2 × 50 ms for an outage in 10M rows split in 64).
const FIRST_SPLIT: u64 = 64;
/// Below PostgreSQL's default `work_mem` for the grouping (~128 bytes a bucket).
const MAX_COARSE_BUCKETS: u64 = 1 << 14;
/// Segments a differing segment is split into.
const SPLIT: u64 = 32;
/// A differing segment with at most this many rows on each side is read rather than split
/// again: a 1,024th of the larger side, within these bounds (a summary costs a round trip
/// and a pass over the segment's rows in each database; reading a small segment costs little
/// more).
const LEAF_ROWS: std::ops::RangeInclusive<u64> = 256..=16_384;
const LEAF_FRACTION: u64 = 1024;
/// Segments sampled before the first split, and how many of them may differ before
/// differences count as everywhere (then a fine first split, or the stream, costs less than
/// splitting nearly every segment again and again).
const SAMPLES: u64 = 8;
const SAMPLES_DIFFERING_EVERYWHERE: u64 = SAMPLES / 2;
/// A sampled segment spans this fraction of the key range, summarised in this many buckets
/// (how densely the differences lie).
const SAMPLE_FRACTION: i128 = 1024;
const SAMPLE_BUCKETS: u64 = 256;
/// Rows per bucket of a fine first split: one pass in each database, then the few rows of
/// each differing bucket read by their keys. At most 2^18 buckets, so that both sides'
/// summaries take ~20 MB here (40 bytes a bucket) and a large table's buckets hold more rows.
const FINE_ROWS: u64 = 16;
const MAX_FINE_BUCKETS: u64 = 1 << 18;
/// A fine split is chosen while the differing buckets are expected to hold at most this
/// share of the rows: a row read by its key costs several streamed ones.
const FINE_READ_SHARE: f64 = 1.0 / 16.0;

/// Open violations whose keys a run totals apart first, at most (one statement's listed
/// keys, less room for the range around a new difference).
const KNOWN_KEYS: u32 = 8_192;
/// A range guessed around a new difference is totalled only while it would hold at most this
/// many rows per row the totals differ by (else the differences are spread out, and the
/// split finds them for less).
const GUESS_ROWS_PER_DIFFERENCE: f64 = 16.0;

pub(super) enum Outcome {
    /// Compared by checksums; the violations are reported and the stats set.
    Checksummed(Compared),
    /// The invariant cannot be checksummed, and why.
    Unfit(String),
    /// It could be, but streaming costs less (`auto` only), and why: the sides hash alike
    /// only by a canonical text's MD5, or a sample says most of the rows would be read.
    NotWorthIt(String),
}

/// A key range and its rows on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    low: i64,
    high: i64,
    left_rows: u64,
    right_rows: u64,
}

impl Segment {
    fn span(&self) -> u128 {
        (i128::from(self.high) - i128::from(self.low) + 1) as u128
    }
}

/// Both sides of a checksummed reconcile, and the segments summarised so far.
struct Sides<'a> {
    spec: &'a ReconcileSpec,
    /// Each side's query (a checksum needs a database on both).
    left_sql: &'a str,
    right_sql: &'a str,
    left: &'a Source,
    right: &'a Source,
    left_hash: RowHash,
    right_hash: RowHash,
    left_may_repeat: bool,
    right_may_repeat: bool,
    key: crate::domain::ColumnName,
    /// Both sides hash with PostgreSQL's typed hashes (a summary costs a fraction of a read).
    typed: bool,
    segments: u64,
    /// Whether the first summary counts the rows with a NULL key (a whole run's does; a
    /// segment of a split run reads only its keys).
    count_null_keys: bool,
}

/// Checksums the whole key range, or only `within` (a segment of a split run, both bounds
/// included).
pub(super) async fn run(
    inv: &Invariant,
    spec: &ReconcileSpec,
    sources: &Sources,
    due_before: Option<DateTime<Utc>>,
    within: Option<(i64, i64)>,
    tally: &mut Tally<'_>,
) -> Result<Outcome, EngineError> {
    if spec.window.is_some() {
        return Ok(Outcome::Unfit(
            "a window selects rows by time, and segment checksums summarise key ranges".into(),
        ));
    }
    if spec.expect == Expect::AtLeastOne {
        return Ok(Outcome::Unfit(
            "`expect: at_least_one` lets a key repeat on the right, which a checksum cannot tell from a difference".into(),
        ));
    }
    let [key] = spec.key.as_slice() else {
        return Ok(Outcome::Unfit(
            "the key has several columns: segments split one integer key".into(),
        ));
    };
    let (Some(left_sql), Some(right_sql)) = (spec.left.query.sql(), spec.right.query.sql()) else {
        return Ok(Outcome::Unfit(
            "a side is an HTTP API, which has no checksums to ask for".into(),
        ));
    };
    let left = sources.get(&spec.left.source)?;
    let right = sources.get(&spec.right.source)?;
    if left.class() == SourceClass::Sql(SourceKind::Sqlite)
        && right.class() == SourceClass::Sql(SourceKind::Sqlite)
    {
        return Ok(Outcome::Unfit(
            "both sides are SQLite files, whose summaries trueup computes by reading every row: streaming them costs less".into(),
        ));
    }
    // In `auto`, a checksum attempt that fails before anything is reported (a statement the
    // server refuses, a connection lost) leaves the run to the stream, which reads the rows
    // itself and fails as any read does if they cannot be read; told to checksum, the
    // failure is the run's.
    macro_rules! attempt {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return fall_back(spec.mode, EngineError::from(e)),
            }
        };
    }
    // Only two PostgreSQL servers can share typed hashes; any other pair hashes by canonical
    // text or not at all, and `auto` streams either way (below), so it probes neither.
    let postgres = |s: &Source| s.class() == SourceClass::Sql(SourceKind::Postgres);
    let auto = spec.mode == ReconcileMode::Auto;
    let flavor = if auto && !(postgres(left) && postgres(right)) {
        Flavor::Canonical
    } else {
        let Some(flavor) = attempt!(flavor(left, right).await) else {
            return Ok(Outcome::Unfit(format!(
                "sources `{}` and `{}` write the same values differently (another byte order, encoding or version)",
                left.name(),
                right.name()
            )));
        };
        flavor
    };
    let (ld, rd) = attempt!(tokio::try_join!(
        left.describe(left_sql),
        right.describe(right_sql)
    ));
    let (Some(lk), Some(rk)) = (
        index_of(&ld.columns, key.as_str()),
        index_of(&rd.columns, key.as_str()),
    ) else {
        // The stream says which side lacks it, in its words.
        return Ok(Outcome::Unfit(format!(
            "a side returns no key column `{key}`"
        )));
    };
    let plan = merge::plan(inv, spec, &ld.columns, &rd.columns)?;
    let (left_hash, right_hash) = match RowHash::pair(&ld, &rd, (lk, rk), &plan.compare, flavor) {
        Ok(pair) => pair,
        Err(why) => return Ok(Outcome::Unfit(why)),
    };
    if auto && flavor == Flavor::Canonical {
        // Measured (PostgreSQL 15 and MariaDB 10.11, 3M identical rows): summarised, 13 s;
        // streamed, 2.3-2.5 s. MariaDB takes 12.8 s for the MD5s of 10M rows, 3.1 s to send
        // them. (After the checks above, so that an invariant that cannot be checksummed at
        // all says why.)
        return Ok(Outcome::NotWorthIt(format!(
            "sources `{}` and `{}` could hash rows alike only by the MD5 of a canonical text, which costs more to compute than the rows cost to send: streaming costs less (`mode: checksum` summarises anyway, where the network is scarcer than CPU)",
            left.name(),
            right.name()
        )));
    }
    // Counting repeated keys costs as much as hashing: skipped where a unique index proves
    // there are none.
    let (left_unique, right_unique) = attempt!(tokio::try_join!(
        left.key_unique(left_sql, &ld, lk),
        right.key_unique(right_sql, &rd, rk)
    ));
    let bounds = match within {
        Some(range) => Some(range),
        None => {
            let (lb, rb) = attempt!(tokio::try_join!(
                left.key_bounds(left_sql, &ld.columns[lk]),
                right.key_bounds(right_sql, &rd.columns[rk])
            ));
            union(lb, rb)
        }
    };
    let Some((low, high)) = bounds else {
        return Ok(Outcome::Unfit(
            "neither side returns a row with a key".into(),
        ));
    };
    let mut sides = Sides {
        spec,
        left_sql,
        right_sql,
        left,
        right,
        left_hash,
        right_hash,
        left_may_repeat: !left_unique,
        right_may_repeat: !right_unique,
        key: key.clone(),
        typed: flavor == Flavor::Typed,
        segments: 0,
        count_null_keys: within.is_none(),
    };

    let started = std::time::Instant::now();
    // Nothing is reported before every summary is in, so a value found on the way to have
    // no checksum form (a SQLite side's, hashed per value, in `mode: checksum`) fails the
    // run having reported nothing.
    let Found {
        mut leaves,
        rows_left,
        rows_right,
        null_keys,
    } = match sides.differing_leaves(low, high, &mut *tally.sink).await {
        Ok(Ok(found)) => found,
        Ok(Err(why)) => return Ok(Outcome::NotWorthIt(why)),
        Err(EngineError::Source(e @ SourceError::NoCanonicalForm { .. })) => {
            return Ok(Outcome::Unfit(e.to_string()));
        }
        Err(e) => return fall_back(spec.mode, e),
    };

    // Read the differing leaves in key order, adjacent ones as one range, several ranges to
    // a read.
    leaves.sort_by_key(|s| s.low);
    let ranges = coalesce(&leaves);
    let summarised = started.elapsed();
    let mut rows_streamed = 0;
    for batch in reads(&ranges) {
        let read = merge::merge(
            inv,
            spec,
            sources,
            due_before,
            &[],
            merge::Keys::Ranges(batch),
            tally,
        )
        .await?;
        rows_streamed += read.rows_left + read.rows_right;
    }
    tracing::debug!(
        invariant = %inv.name,
        segments = sides.segments,
        differing = leaves.len(),
        rows_streamed,
        "checksums: summaries took {:.2?}, reading the differing key ranges {:.2?}",
        summarised,
        started.elapsed() - summarised
    );
    tally.stats.rows_left = rows_left;
    tally.stats.rows_right = rows_right;
    tally.stats.null_keys = null_keys;
    Ok(Outcome::Checksummed(Compared {
        method: CompareMethod::Checksum,
        streamed_because: None,
        segments: sides.segments,
        segments_streamed: leaves.len() as u64,
        rows_streamed,
    }))
}

/// What a failed checksum attempt comes to: in `auto`, the stream (with the failure as its
/// reason, and a warning); otherwise the run's failure.
fn fall_back(mode: ReconcileMode, e: EngineError) -> Result<Outcome, EngineError> {
    match (mode, &e) {
        (ReconcileMode::Auto, EngineError::Source(source)) => {
            tracing::warn!("checksums failed, streaming instead: {source}");
            Ok(Outcome::Unfit(format!(
                "the checksum attempt failed ({source})"
            )))
        }
        _ => Err(e),
    }
}

/// How both sides hash rows: PostgreSQL's typed hashes where both sources compute them
/// alike, else the canonical text both write alike; `None`: neither agrees.
async fn flavor(left: &Source, right: &Source) -> Result<Option<Flavor>, EngineError> {
    for flavor in [Flavor::Typed, Flavor::Canonical] {
        let (l, r) = tokio::try_join!(left.checksum_probe(flavor), right.checksum_probe(flavor))?;
        if let (Some(l), Some(r)) = (l, r)
            && l == r
        {
            return Ok(Some(flavor));
        }
    }
    Ok(None)
}

/// What the summaries found: the key ranges to read (the smallest differing segments, or the
/// keys and range the totals located, whose rows a `Segment` then does not count), and the
/// rows of each side (NULL keys included) and the NULL keys of both.
struct Found {
    leaves: Vec<Segment>,
    rows_left: u64,
    rows_right: u64,
    null_keys: u64,
}

impl Sides<'_> {
    /// Summarises `[low, high]` (first in whole totals, where the sample finds few
    /// differences between two PostgreSQL servers: [`Sides::located`]), then splits what
    /// differs until it is small enough to read; `Err(why)` when `auto`'s sample says to
    /// stream.
    async fn differing_leaves(
        &mut self,
        low: i64,
        high: i64,
        sink: &mut dyn ViolationSink,
    ) -> Result<Result<Found, String>, EngineError> {
        let sampled = self.sample(low, high).await?;
        let span = (i128::from(high) - i128::from(low) + 1) as u128;
        let split = first_split(&sampled, span, self.typed);
        if self.typed
            && matches!(split, FirstSplit::Coarse(_))
            && let Some(found) = self.located(low, high, sink).await?
        {
            return Ok(Ok(found));
        }
        let first = match split {
            FirstSplit::Coarse(buckets) => buckets,
            FirstSplit::Fine(buckets) => buckets,
            FirstSplit::Stream(why) if self.spec.mode == ReconcileMode::Auto => {
                return Ok(Err(why));
            }
            // Told to checksum: split and split again.
            FirstSplit::Stream(_) => coarse_buckets(&sampled, span),
        };

        // The first split, over every key (and the NULL keys, counted once).
        let mut differing = Vec::new();
        let (mut rows_left, mut rows_right, mut null_keys) = (0, 0, 0);
        for (i, (low, high)) in halves(low, high).into_iter().enumerate() {
            let pass = self
                .compare_ordered(low, high, first, i == 0 && self.count_null_keys)
                .await?;
            null_keys += pass.null_left + pass.null_right;
            rows_left += pass.null_left + pass.rows_left;
            rows_right += pass.null_right + pass.rows_right;
            differing.extend(pass.differing);
        }

        // Split what differs until it is small enough to read.
        let leaf_rows =
            (rows_left.max(rows_right) / LEAF_FRACTION).clamp(*LEAF_ROWS.start(), *LEAF_ROWS.end());
        let mut leaves = Vec::new();
        while let Some(segment) = differing.pop() {
            if segment.left_rows.max(segment.right_rows) <= leaf_rows
                || segment.span() <= u128::from(SPLIT)
            {
                leaves.push(segment);
                continue;
            }
            let pass = self
                .compare_ordered(segment.low, segment.high, SPLIT, false)
                .await?;
            differing.extend(pass.differing);
        }
        Ok(Ok(Found {
            leaves,
            rows_left,
            rows_right,
            null_keys,
        }))
    }

    /// Where few differences are expected, first the totals of `[low, high]` on each side
    /// in one pass without buckets (~0.8 of a split's): equal, the sides are. Else the
    /// keys the ledger holds open (`sink`'s hint) are totalled apart, then, if the rest still
    /// differs, a range around where the rest's key sums put its difference (an outage's
    /// missing rows): if what lies outside those keys totals alike on both sides, the
    /// difference lies among them, and they are what is read. `None`: the difference could
    /// not be located so (it is spread out, values changed in place, as many rows extra as
    /// missing, or a key repeats), and the range is split as usual, one pass later than
    /// without this. Exact either way: a key lies among
    /// the keys read or in the rest, whose totals are the whole's less theirs (hashed alike,
    /// for the same range).
    async fn located(
        &mut self,
        low: i64,
        high: i64,
        sink: &mut dyn ViolationSink,
    ) -> Result<Option<Found>, EngineError> {
        let whole = self.totals(low, high, None, self.count_null_keys).await?;
        let found = |leaves: &[(i64, i64)]| Found {
            leaves: leaves
                .iter()
                .map(|&(low, high)| Segment {
                    low,
                    high,
                    left_rows: 0,
                    right_rows: 0,
                })
                .collect(),
            rows_left: whole.0.summary.rows + whole.0.null_keys,
            rows_right: whole.1.summary.rows + whole.1.null_keys,
            null_keys: whole.0.null_keys + whole.1.null_keys,
        };
        if !differs(&whole.0.summary, &whole.1.summary) {
            return Ok(Some(found(&[])));
        }
        // A repeated key's count is no difference between the sides but a count that must
        // be 0: taken apart by subtraction, one repeat added to the part's keys between the
        // two statements would hide one in the rest. The split counts them bucket by bucket.
        if whole.0.summary.repeats > 0 || whole.1.summary.repeats > 0 {
            return Ok(None);
        }
        // Only now the ledger: most runs end above. A hint it cannot give costs only the
        // hint (the window is still tried), never the run.
        let known = match sink.open_keys(KNOWN_KEYS).await {
            Ok(keys) => known_keys(&keys, low, high),
            Err(e) => {
                tracing::warn!(
                    "checksums: the open violations' keys could not be read, so they are not looked at first: {e}"
                );
                Vec::new()
            }
        };
        let mut suspects = Vec::new();
        let mut rest = whole;
        if !known.is_empty()
            && let Some(r) = self.rest(low, high, &whole, &known).await?
        {
            if !differs(&r.0.summary, &r.1.summary) {
                return Ok(Some(found(&known)));
            }
            (suspects, rest) = (known, r);
        }
        let rows = whole.0.summary.rows.max(whole.1.summary.rows);
        let Some(window) = around_the_difference(&rest, low, high, rows) else {
            return Ok(None);
        };
        suspects.push(window);
        suspects.sort_unstable();
        let suspects = merged(&suspects);
        match self.rest(low, high, &whole, &suspects).await? {
            Some(r) if !differs(&r.0.summary, &r.1.summary) => Ok(Some(found(&suspects))),
            _ => Ok(None),
        }
    }

    /// Both sides' totals of `[low, high]` less those of its `keys` (sorted, disjoint
    /// ranges); `None` when a side's part exceeds its whole (rows changed between the two
    /// statements), or, a guard, the keys would not fit one statement (at most
    /// [`KNOWN_KEYS`] listed keys and a window never do).
    async fn rest(
        &mut self,
        low: i64,
        high: i64,
        whole: &(Totals, Totals),
        keys: &[(i64, i64)],
    ) -> Result<Option<(Totals, Totals)>, EngineError> {
        if reads(keys).len() > 1 {
            return Ok(None);
        }
        let only = KeyRanges {
            column: self.key.clone(),
            ranges: keys.to_vec(),
        };
        let part = self.totals(low, high, Some(&only), false).await?;
        Ok(less(&whole.0, &part.0).zip(less(&whole.1, &part.1)))
    }

    /// Both sides' totals of `[low, high]` (hashed for that range), over `only`'s keys when
    /// given.
    async fn totals(
        &mut self,
        low: i64,
        high: i64,
        only: Option<&KeyRanges>,
        null_keys: bool,
    ) -> Result<(Totals, Totals), EngineError> {
        let (lq, rq) = self.requests(low, high, 1, null_keys);
        let (left, right) = (self.left, self.right);
        let totals = tokio::try_join!(left.totals(&lq, only), right.totals(&rq, only))?;
        self.segments += 1;
        Ok(totals)
    }

    /// Summarises `[low, high]` on both sides at once in `buckets` segments, and compares
    /// the two summaries as they arrive in bucket order, holding only the differing
    /// segments: held whole, a fine split's 2^18 buckets a side took 20 MB (peak RSS 67 MiB
    /// at 10M rows, against 40 MiB at 1M).
    async fn compare_ordered(
        &mut self,
        low: i64,
        high: i64,
        buckets: u64,
        null_keys: bool,
    ) -> Result<Pass, EngineError> {
        let (lq, rq) = self.requests(low, high, buckets, null_keys);
        let (left, right) = (self.left, self.right);
        // A chunk or two in flight a side: the faster side waits for the slower one.
        let (ltx, lrx) = tokio::sync::mpsc::channel(2);
        let (rtx, rrx) = tokio::sync::mpsc::channel(2);
        let walk = async {
            walk_ordered(lrx, rrx, low, high, buckets).await.map_err(
                |OutOfOrder { left: on_left }| {
                    let source = if on_left { left } else { right };
                    EngineError::Source(SourceError::Query {
                        source_name: source.name().clone(),
                        message: "a checksum summary: its buckets are out of order".to_owned(),
                    })
                },
            )
        };
        let (null_left, null_right, mut pass) = tokio::try_join!(
            async { Ok::<_, EngineError>(left.summarize_ordered(&lq, ltx).await?) },
            async { Ok::<_, EngineError>(right.summarize_ordered(&rq, rtx).await?) },
            walk
        )?;
        self.segments += pass.segments;
        (pass.null_left, pass.null_right) = (null_left, null_right);
        Ok(pass)
    }

    /// What `[low, high]` in `buckets` segments asks each side.
    fn requests(
        &self,
        low: i64,
        high: i64,
        buckets: u64,
        null_keys: bool,
    ) -> (SummaryRequest, SummaryRequest) {
        let request = |query: &str, hash: &RowHash, key_may_repeat: bool| SummaryRequest {
            query: query.to_owned(),
            hash: hash.clone(),
            range: KeyRange {
                column: self.key.clone(),
                low,
                high,
            },
            buckets,
            null_keys,
            key_may_repeat,
        };
        (
            request(self.left_sql, &self.left_hash, self.left_may_repeat),
            request(self.right_sql, &self.right_hash, self.right_may_repeat),
        )
    }

    /// [`SAMPLES`] small segments spread over `[low, high]`, each summarised in
    /// [`SAMPLE_BUCKETS`] buckets: how many differ, and how densely.
    async fn sample(&mut self, low: i64, high: i64) -> Result<Sampled, EngineError> {
        let span = i128::from(high) - i128::from(low) + 1;
        let width = (span / SAMPLE_FRACTION).max(1);
        let step = span / i128::from(SAMPLES);
        let mut sampled = Sampled::default();
        for i in 0..i128::from(SAMPLES) {
            let start = i128::from(low) + i * step;
            let end = (start + width - 1).min(i128::from(high));
            let (start, end) = (start as i64, end as i64);
            let pass = self
                .compare_ordered(start, end, SAMPLE_BUCKETS, false)
                .await?;
            let differing = pass.differing.len() as u64;
            sampled.buckets += pass.segments;
            sampled.rows += pass.rows_larger;
            sampled.span += (i128::from(end) - i128::from(start) + 1) as u128;
            sampled.segments_differing += u64::from(differing > 0);
            sampled.differing += differing;
        }
        Ok(sampled)
    }
}

/// What one ordered comparison of a range found: its differing segments, the rows of each
/// side in its buckets and with a NULL key, and the buckets either side holds.
#[derive(Debug, Default)]
struct Pass {
    differing: Vec<Segment>,
    rows_left: u64,
    rows_right: u64,
    /// Rows of the larger side, bucket by bucket (what a sample reads as its rows).
    rows_larger: u64,
    null_left: u64,
    null_right: u64,
    segments: u64,
}

/// A side sent a bucket after a later one (or twice), which a summary in bucket order never
/// does: comparing it as if in order would miss differences.
#[derive(Debug, PartialEq, Eq)]
struct OutOfOrder {
    left: bool,
}

/// Both sides' summaries of `[low, high]` in `buckets` segments, as they arrive in bucket
/// order: every bucket either side holds, compared once.
async fn walk_ordered(
    left: tokio::sync::mpsc::Receiver<Vec<(u64, SegmentSummary)>>,
    right: tokio::sync::mpsc::Receiver<Vec<(u64, SegmentSummary)>>,
    low: i64,
    high: i64,
    buckets: u64,
) -> Result<Pass, OutOfOrder> {
    let (mut l, mut r) = (Ordered::new(left).await, Ordered::new(right).await);
    let mut pass = Pass::default();
    let empty = SegmentSummary::default();
    // A side out of order ends the walk: nothing it found can be trusted.
    while !(l.out_of_order || r.out_of_order) {
        let (b, ls, rs) = match (l.head, r.head) {
            (None, None) => break,
            (Some((lb, _)), Some((rb, _))) if lb == rb => (lb, l.take().await, r.take().await),
            (Some((lb, _)), Some((rb, _))) if lb > rb => (rb, empty, r.take().await),
            (Some((lb, _)), _) => (lb, l.take().await, empty),
            (None, Some((rb, _))) => (rb, empty, r.take().await),
        };
        pass.segments += 1;
        pass.rows_left += ls.rows;
        pass.rows_right += rs.rows;
        pass.rows_larger += ls.rows.max(rs.rows);
        if differs(&ls, &rs) {
            let (low, high) = bucket_range(low, high, buckets, b);
            pass.differing.push(Segment {
                low,
                high,
                left_rows: ls.rows,
                right_rows: rs.rows,
            });
        }
    }
    if l.out_of_order || r.out_of_order {
        return Err(OutOfOrder {
            left: l.out_of_order,
        });
    }
    Ok(pass)
}

/// One side's ordered summary as it arrives, a bucket at a time.
struct Ordered {
    from: tokio::sync::mpsc::Receiver<Vec<(u64, SegmentSummary)>>,
    chunk: std::vec::IntoIter<(u64, SegmentSummary)>,
    /// The next bucket, `None` once the side has sent them all (or one out of order).
    head: Option<(u64, SegmentSummary)>,
    /// The last bucket read, and whether one after it came out of order (which ends the
    /// side).
    last: Option<u64>,
    out_of_order: bool,
}

impl Ordered {
    async fn new(from: tokio::sync::mpsc::Receiver<Vec<(u64, SegmentSummary)>>) -> Self {
        let mut side = Ordered {
            from,
            chunk: Vec::new().into_iter(),
            head: None,
            last: None,
            out_of_order: false,
        };
        side.head = side.next().await;
        side
    }

    async fn next(&mut self) -> Option<(u64, SegmentSummary)> {
        while !self.out_of_order {
            if let Some(bucket) = self.chunk.next() {
                if self.last.is_some_and(|last| bucket.0 <= last) {
                    self.out_of_order = true;
                    break;
                }
                self.last = Some(bucket.0);
                return Some(bucket);
            }
            self.chunk = self.from.recv().await?.into_iter();
        }
        None
    }

    /// The head's summary, moving on to the next bucket.
    async fn take(&mut self) -> SegmentSummary {
        let summary = self.head.map(|(_, s)| s).unwrap_or_default();
        self.head = self.next().await;
        summary
    }
}

/// What the sampled segments found.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Sampled {
    /// Keys the sampled segments span.
    span: u128,
    segments_differing: u64,
    /// Their non-empty buckets, and how many of those differ.
    buckets: u64,
    differing: u64,
    /// Their rows (of the larger side, per bucket).
    rows: u64,
}

/// How the key range is first split.
#[derive(Debug, Clone, PartialEq)]
enum FirstSplit {
    /// Few segments differ: this many, of about half a leaf's rows each (see
    /// [`coarse_buckets`]); the differing ones are read, or split again where they hold more.
    Coarse(u64),
    /// Differences everywhere but few per row: this many buckets of about [`FINE_ROWS`]
    /// rows (more where [`MAX_FINE_BUCKETS`] binds), the differing ones read by their keys.
    Fine(u64),
    /// Differences everywhere and dense (or only coarse splits possible): streaming costs
    /// less, and why.
    Stream(String),
}

/// The first split of a range of `span` keys, from its sample. `typed`: both sides hash with
/// PostgreSQL's typed hashes, whose pass costs a fraction of a read; a canonical text's MD5
/// costs more than sending the row (`auto` never gets here with it: `mode: checksum` then
/// splits coarsely where this says to stream).
fn first_split(sampled: &Sampled, span: u128, typed: bool) -> FirstSplit {
    if sampled.segments_differing < SAMPLES_DIFFERING_EVERYWHERE {
        return FirstSplit::Coarse(coarse_buckets(sampled, span));
    }
    let everywhere = format!(
        "{} of {SAMPLES} sampled segments differ",
        sampled.segments_differing
    );
    if !typed || sampled.buckets == 0 || sampled.span == 0 {
        return FirstSplit::Stream(format!(
            "{everywhere}, so nearly every segment would be read: streaming costs less"
        ));
    }
    let rows = sampled.rows as f64 * span as f64 / sampled.span as f64;
    let buckets = ((rows / FINE_ROWS as f64).ceil() as u64).clamp(FIRST_SPLIT, MAX_FINE_BUCKETS);
    // A differing bucket is read by listing its keys: it must span few.
    if span.div_ceil(u128::from(buckets)) > u128::from(KeyRanges::LISTED_SPAN) {
        return FirstSplit::Stream(format!(
            "{everywhere}, and a fine split's buckets would span more than {} keys each, too many to read by key: streaming costs less",
            KeyRanges::LISTED_SPAN
        ));
    }
    // Differences per row, from the share of sampled buckets that differ (each holds a
    // difference with a chance of 1 - e^(-rate x rows)), and the share of rows a fine split
    // would read.
    let differing = sampled.differing as f64 / sampled.buckets as f64;
    let rows_per_bucket = sampled.rows as f64 / sampled.buckets as f64;
    let rate = -(1.0 - differing).ln() / rows_per_bucket.max(1.0);
    let fine_rows = (rows / buckets as f64).max(1.0);
    let read_share = 1.0 - (-rate * fine_rows).exp();
    // NaN (no bucket sampled with a row) streams too.
    if read_share.is_nan() || read_share > FINE_READ_SHARE {
        return FirstSplit::Stream(format!(
            "{everywhere}, and about {:.0}% of the rows lie in their differing buckets of {fine_rows:.0}: streaming costs less",
            (read_share * 100.0).min(100.0)
        ));
    }
    FirstSplit::Fine(buckets)
}

/// Buckets of about half a leaf's rows each over a range of `span` keys, as many rows as
/// the sample suggests (a leaf: [`LEAF_FRACTION`] of the rows, within [`LEAF_ROWS`]), within
/// [`FIRST_SPLIT`] and [`MAX_COARSE_BUCKETS`] and no more than the keys.
fn coarse_buckets(sampled: &Sampled, span: u128) -> u64 {
    if sampled.span == 0 {
        return FIRST_SPLIT;
    }
    let rows = sampled.rows as f64 * span as f64 / sampled.span as f64;
    let leaf =
        (rows / LEAF_FRACTION as f64).clamp(*LEAF_ROWS.start() as f64, *LEAF_ROWS.end() as f64);
    // Half a leaf each, so that a bucket denser than the sample's average is still one.
    let buckets = ((2.0 * rows / leaf).ceil() as u64).clamp(FIRST_SPLIT, MAX_COARSE_BUCKETS);
    buckets.min(u64::try_from(span).unwrap_or(u64::MAX)).max(1)
}

/// The smallest range holding both sides' keys.
pub(super) fn union(left: Option<(i64, i64)>, right: Option<(i64, i64)>) -> Option<(i64, i64)> {
    match (left, right) {
        (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
        (one, None) | (None, one) => one,
    }
}

/// `[low, high]` as ranges of at most 2^63 keys (split at 0 when wider), so that a key's
/// offset from its range's start fits a bigint in the database.
fn halves(low: i64, high: i64) -> Vec<(i64, i64)> {
    if i128::from(high) - i128::from(low) < i128::from(i64::MAX) {
        vec![(low, high)]
    } else {
        vec![(low, -1), (0, high)]
    }
}

/// The key range of bucket `b` of `[low, high]` split into `buckets` of equal width.
pub(super) fn bucket_range(low: i64, high: i64, buckets: u64, b: u64) -> (i64, i64) {
    let span = (i128::from(high) - i128::from(low) + 1) as u128;
    let width = span.div_ceil(u128::from(buckets.max(1))).max(1) as i128;
    let start = i128::from(low) + i128::from(b) * width;
    let end = (start + width - 1).min(i128::from(high));
    (start as i64, end as i64)
}

/// Whether a bucket must be read: its sides differ, or either repeats a key.
fn differs(left: &SegmentSummary, right: &SegmentSummary) -> bool {
    left != right || left.repeats > 0 || right.repeats > 0
}

/// A whole's totals less a part's (the part's keys are the whole's too); `None` when the
/// part holds more rows or repeats than the whole (a side changed in between).
fn less(whole: &Totals, part: &Totals) -> Option<Totals> {
    Some(Totals {
        summary: SegmentSummary {
            rows: whole.summary.rows.checked_sub(part.summary.rows)?,
            sum: whole
                .summary
                .sum
                .get()
                .wrapping_sub(part.summary.sum.get())
                .into(),
            repeats: whole.summary.repeats.checked_sub(part.summary.repeats)?,
        },
        null_keys: whole.null_keys.saturating_sub(part.null_keys),
        key_sum: whole.key_sum - part.key_sum,
        key_squares: whole.key_squares - part.key_squares,
    })
}

/// Where the rows two totals of `[low, high]` differ by lie, when they are rows one side
/// lacks and lie close together (an outage): the mean of their keys' places (see
/// [`key_shift`]), from what the exact sums of places and of their squares differ by, two
/// standard deviations either side (a block of consecutive keys reaches 1.73σ either side of
/// its mean), and a place more. `None` when the counts are equal (values changed in place, or as many rows missing
/// as extra), the sums contradict one kind of difference (by Cauchy–Schwarz, n·Σx² ≥ (Σx)²
/// for the rows one side lacks), or the range would hold more than
/// [`GUESS_ROWS_PER_DIFFERENCE`] rows per differing row at the density of `rows` (the larger
/// side's) over the range. A guess: the totals of the rest decide.
fn around_the_difference(
    (left, right): &(Totals, Totals),
    low: i64,
    high: i64,
    rows: u64,
) -> Option<(i64, i64)> {
    let n = i128::from(left.summary.rows) - i128::from(right.summary.rows);
    let sum = left.key_sum - right.key_sum;
    let squares = left.key_squares - right.key_squares;
    if n == 0 || squares.signum() * n.signum() < 0 {
        return None;
    }
    // n² times the variance, exactly: negative only if rows lack on both sides.
    let spread = n.checked_mul(squares)?.checked_sub(sum.checked_mul(sum)?)?;
    if spread < 0 {
        return None;
    }
    let shift = key_shift(low, high);
    let base = i128::from(low >> shift);
    let places = (i128::from(high) >> shift) - base;
    let mean = sum as f64 / n as f64;
    if !(0.0..=places as f64).contains(&mean) {
        return None;
    }
    let half = 2.0 * (spread as f64).sqrt() / n.unsigned_abs() as f64 + 1.0;
    let first = (mean - half).floor().max(0.0) as i128;
    let last = ((mean + half).ceil() as i128).min(places);
    let from = ((base + first) << shift).max(i128::from(low));
    let to = (((base + last + 1) << shift) - 1).min(i128::from(high));
    let span = (i128::from(high) - i128::from(low) + 1) as f64;
    let width = (to - from + 1) as f64;
    if from > to || width * rows as f64 / span > GUESS_ROWS_PER_DIFFERENCE * n.unsigned_abs() as f64
    {
        return None;
    }
    Some((from as i64, to as i64))
}

/// The integer keys among `keys` (a violation's key as JSON: an array of its values) within
/// `[low, high]`, as sorted ranges, adjacent keys joined (an outage's as one).
fn known_keys(keys: &[serde_json::Value], low: i64, high: i64) -> Vec<(i64, i64)> {
    let mut out: Vec<i64> = keys
        .iter()
        .filter_map(|k| match k {
            serde_json::Value::Array(values) => match values.as_slice() {
                [one] => one.as_i64(),
                _ => None,
            },
            _ => None,
        })
        .filter(|k| (low..=high).contains(k))
        .collect();
    out.sort_unstable();
    out.dedup();
    merged(&out.into_iter().map(|k| (k, k)).collect::<Vec<_>>())
}

/// Sorted ranges, overlapping or adjacent ones joined.
fn merged(sorted: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for &(low, high) in sorted {
        match out.last_mut() {
            Some((_, last)) if i128::from(*last) + 1 >= i128::from(low) => {
                *last = (*last).max(high);
            }
            _ => out.push((low, high)),
        }
    }
    out
}

/// Sorted segments as ranges, adjacent ones joined.
fn coalesce(sorted: &[Segment]) -> Vec<(i64, i64)> {
    merged(&sorted.iter().map(|s| (s.low, s.high)).collect::<Vec<_>>())
}

/// Sorted, disjoint ranges as reads in key order, each of at most
/// [`KeyRanges::MAX_LISTED_KEYS`] listed keys and [`KeyRanges::MAX_BOUNDED`] bounded ranges.
fn reads(ranges: &[(i64, i64)]) -> Vec<&[(i64, i64)]> {
    let mut out = Vec::new();
    let (mut start, mut keys, mut bounded) = (0, 0, 0);
    for (i, &(low, high)) in ranges.iter().enumerate() {
        let (k, b) = KeyRanges::weight(low, high);
        if i > start
            && (keys + k > KeyRanges::MAX_LISTED_KEYS || bounded + b > KeyRanges::MAX_BOUNDED)
        {
            out.push(&ranges[start..i]);
            (start, keys, bounded) = (i, 0, 0);
        }
        keys += k;
        bounded += b;
    }
    if start < ranges.len() {
        out.push(&ranges[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hold_at_most_ten_thousand_listed_keys_or_sixty_four_bounded_ranges_in_key_order() {
        // 700 narrow ranges of 16 keys (11,200 keys): two reads, the first of 625 ranges.
        let narrow: Vec<(i64, i64)> = (0..700).map(|i| (i * 100, i * 100 + 15)).collect();
        let batches = reads(&narrow);
        assert_eq!(
            batches.iter().map(|b| b.len()).collect::<Vec<_>>(),
            vec![625, 75]
        );
        // 100 wide ranges: 64, then 36.
        let wide: Vec<(i64, i64)> = (0..100).map(|i| (i * 1000, i * 1000 + 500)).collect();
        assert_eq!(
            reads(&wide).iter().map(|b| b.len()).collect::<Vec<_>>(),
            vec![64, 36]
        );
        // Every range once, in order; a range wider than a read's keys still gets a read.
        let mixed = [
            (0, 15),
            (100, 100_000),
            (200_000, 200_063),
            (300_000, 300_000),
        ];
        let batches = reads(&mixed);
        assert_eq!(batches.concat(), mixed.to_vec());
        assert!(reads(&[]).is_empty());
    }

    #[test]
    fn the_first_split_is_coarse_fine_or_a_stream_as_the_sample_says() {
        // 8 segments of 10,000 keys, each in 256 buckets of ~39 rows.
        let sampled = |segments_differing, differing| Sampled {
            span: 80_000,
            segments_differing,
            buckets: 8 * 256,
            differing,
            rows: 80_000,
        };
        let span = 10_240_000;
        // Few segments differ: split and split again.
        // Few segments differ: half a leaf's rows to a bucket (10M rows: 2,048 of ~5,000),
        // so that a differing one is read at once; small tables in 64, huge ones at most 2^14.
        assert_eq!(
            first_split(&sampled(3, 3), span, true),
            FirstSplit::Coarse(2048)
        );
        assert_eq!(
            first_split(&sampled(3, 3), 5_000, true),
            FirstSplit::Coarse(FIRST_SPLIT)
        );
        assert_eq!(
            first_split(&sampled(3, 3), 100_000, true),
            FirstSplit::Coarse(782)
        );
        assert_eq!(
            first_split(&sampled(3, 3), span * 1000, true),
            FirstSplit::Coarse(MAX_COARSE_BUCKETS)
        );
        let empty = Sampled::default();
        assert_eq!(
            first_split(&empty, span, true),
            FirstSplit::Coarse(FIRST_SPLIT)
        );
        // Keys far apart: no more buckets than keys.
        assert_eq!(coarse_buckets(&sampled(3, 3), 100), 64);
        assert_eq!(coarse_buckets(&sampled(3, 3), 40), 40);
        // Differences in every segment, one in ~1,000 rows: one fine pass, 16 rows a bucket.
        // (10M rows: 2^18 buckets of ~39 rows, not 640,000 of 16.)
        assert_eq!(
            first_split(&sampled(8, 80), span, true),
            FirstSplit::Fine(1 << 18)
        );
        assert_eq!(
            first_split(&sampled(8, 80), span / 10, true),
            FirstSplit::Fine(64_000)
        );
        // One in five rows: nearly every bucket would be read.
        let FirstSplit::Stream(why) = first_split(&sampled(8, 2000), span, true) else {
            panic!("dense differences are streamed");
        };
        assert_eq!(
            why,
            "8 of 8 sampled segments differ, and about 98% of the rows lie in their differing buckets of 39: streaming costs less"
        );
        // Every bucket differs.
        assert!(matches!(
            first_split(&sampled(8, 8 * 256), span, true),
            FirstSplit::Stream(_)
        ));
        // Canonical hashes (across engines) cost more than a read: never a fine split.
        assert_eq!(
            first_split(&sampled(8, 80), span, false),
            FirstSplit::Stream(
                "8 of 8 sampled segments differ, so nearly every segment would be read: streaming costs less".into()
            )
        );
        // Keys a hundred apart: a bucket spans 3,900 keys, too many to list.
        let sparse = Sampled {
            span: 8_000_000,
            ..sampled(8, 80)
        };
        let FirstSplit::Stream(why) = first_split(&sparse, span * 100, true) else {
            panic!("sparse keys are streamed");
        };
        assert_eq!(
            why,
            "8 of 8 sampled segments differ, and a fine split's buckets would span more than 256 keys each, too many to read by key: streaming costs less"
        );
        // A fine split has at least the coarse one's buckets.
        assert_eq!(
            first_split(&sampled(8, 80), 1_000, true),
            FirstSplit::Fine(FIRST_SPLIT)
        );
        // 2^40 rows: 2^18 buckets would each span 2^22 keys.
        assert!(matches!(
            first_split(&sampled(8, 80), 1 << 40, true),
            FirstSplit::Stream(_)
        ));
    }

    /// A bucket's summary of `rows` rows summing to `sum`, no key repeated.
    fn seg(rows: u64, sum: i128) -> SegmentSummary {
        SegmentSummary {
            rows,
            sum: sum.into(),
            repeats: 0,
        }
    }

    #[tokio::test]
    async fn ordered_summaries_are_compared_as_they_arrive_in_chunks_of_any_size() {
        let (ltx, lrx) = tokio::sync::mpsc::channel(1);
        let (rtx, rrx) = tokio::sync::mpsc::channel(1);
        // 10 buckets of 10 keys over [1, 100]: bucket 2 on the left only, 5 on the right
        // only, 7 with another sum, 9 repeating a key on both sides; chunks cut anywhere.
        let left = vec![
            vec![(0, seg(10, 1)), (1, seg(10, 2))],
            vec![(2, seg(3, 3)), (3, seg(10, 4)), (7, seg(10, 7))],
            vec![(
                9,
                SegmentSummary {
                    repeats: 1,
                    ..seg(11, 9)
                },
            )],
        ];
        let right = vec![
            vec![(0, seg(10, 1))],
            vec![
                (1, seg(10, 2)),
                (3, seg(10, 4)),
                (5, seg(2, 5)),
                (7, seg(10, -7)),
            ],
            vec![],
            vec![(
                9,
                SegmentSummary {
                    repeats: 1,
                    ..seg(11, 9)
                },
            )],
        ];
        let send = |tx: tokio::sync::mpsc::Sender<_>, chunks: Vec<Vec<_>>| async move {
            for chunk in chunks {
                tx.send(chunk).await.expect("the walk reads every chunk");
            }
        };
        let (pass, (), ()) = tokio::join!(
            walk_ordered(lrx, rrx, 1, 100, 10),
            send(ltx, left),
            send(rtx, right)
        );
        let pass = pass.expect("both sides in order");
        let differing: Vec<(i64, i64, u64, u64)> = pass
            .differing
            .iter()
            .map(|s| (s.low, s.high, s.left_rows, s.right_rows))
            .collect();
        assert_eq!(
            differing,
            vec![
                (21, 30, 3, 0),
                (51, 60, 0, 2),
                (71, 80, 10, 10),
                (91, 100, 11, 11)
            ]
        );
        assert_eq!(
            (
                pass.rows_left,
                pass.rows_right,
                pass.rows_larger,
                pass.segments
            ),
            (54, 53, 56, 7)
        );
    }

    #[tokio::test]
    async fn a_side_that_sends_nothing_leaves_every_bucket_of_the_other_differing() {
        let seg = seg(10, 1);
        let (ltx, lrx) = tokio::sync::mpsc::channel(1);
        let (rtx, rrx) = tokio::sync::mpsc::channel::<Vec<(u64, SegmentSummary)>>(1);
        drop(rtx);
        let (pass, ()) = tokio::join!(walk_ordered(lrx, rrx, 1, 100, 10), async move {
            ltx.send(vec![(0, seg), (4, seg)])
                .await
                .expect("the walk reads the left side");
        });
        let pass = pass.expect("in order");
        let differing: Vec<(i64, i64, u64, u64)> = pass
            .differing
            .iter()
            .map(|s| (s.low, s.high, s.left_rows, s.right_rows))
            .collect();
        assert_eq!(differing, vec![(1, 10, 10, 0), (41, 50, 10, 0)]);
        assert_eq!((pass.rows_left, pass.rows_right, pass.segments), (20, 0, 2));
    }

    #[tokio::test]
    async fn a_bucket_sent_again_or_after_a_later_one_fails_the_walk_and_says_which_side() {
        let seg = seg(10, 1);
        let in_order = vec![vec![(0, seg), (3, seg)], vec![(5, seg)]];
        for wrong in [
            vec![vec![(0, seg), (5, seg)], vec![(3, seg)]],
            vec![vec![(0, seg), (3, seg)], vec![(3, seg)]],
        ] {
            for left in [true, false] {
                let (l, r) = if left {
                    (wrong.clone(), in_order.clone())
                } else {
                    (in_order.clone(), wrong.clone())
                };
                // Room for every chunk: a side goes on sending after the walk stopped.
                let (ltx, lrx) = tokio::sync::mpsc::channel(4);
                let (rtx, rrx) = tokio::sync::mpsc::channel(4);
                let send = |tx: tokio::sync::mpsc::Sender<_>, chunks: Vec<Vec<_>>| async move {
                    for chunk in chunks {
                        let _ = tx.send(chunk).await;
                    }
                };
                let (pass, (), ()) = tokio::join!(
                    walk_ordered(lrx, rrx, 1, 100, 10),
                    send(ltx, l),
                    send(rtx, r)
                );
                assert_eq!(pass.err(), Some(OutOfOrder { left }), "{wrong:?}");
            }
        }
    }

    #[test]
    fn buckets_cover_the_range_without_gaps_or_overlaps() {
        for (low, high, buckets) in [
            (1, 100, 64),
            (-5, 5, 32),
            (0, i64::MAX, 64),
            (i64::MIN, -1, 7),
            (7, 7, 64),
        ] {
            let mut next = i128::from(low);
            for b in 0..buckets {
                let (s, e) = bucket_range(low, high, buckets, b);
                if i128::from(s) > i128::from(high) {
                    break;
                }
                assert_eq!(i128::from(s), next, "bucket {b} of [{low}, {high}]");
                assert!(e >= s);
                next = i128::from(e) + 1;
            }
            assert_eq!(next, i128::from(high) + 1, "[{low}, {high}] / {buckets}");
        }
    }

    #[test]
    fn a_range_wider_than_a_bigint_offset_is_split_at_zero() {
        assert_eq!(halves(-10, 10), vec![(-10, 10)]);
        assert_eq!(
            halves(i64::MIN, i64::MAX),
            vec![(i64::MIN, -1), (0, i64::MAX)]
        );
        assert_eq!(halves(-1, i64::MAX), vec![(-1, -1), (0, i64::MAX)]);
    }

    #[test]
    fn a_segment_differs_by_count_sum_a_side_alone_or_a_repeated_key_on_either_side() {
        let seg = |rows: u64, sum: i128, repeats: u64| SegmentSummary {
            rows,
            sum: sum.into(),
            repeats,
        };
        let empty = SegmentSummary::default();
        assert!(!differs(&seg(10, 5, 0), &seg(10, 5, 0)));
        assert!(differs(&seg(10, 5, 0), &seg(9, 5, 0)), "count");
        assert!(differs(&seg(10, 5, 0), &seg(10, 6, 0)), "sum");
        assert!(differs(&seg(3, 1, 0), &empty), "left alone");
        assert!(differs(&empty, &seg(1, 1, 0)), "right alone");
        assert!(
            differs(&seg(10, 5, 1), &seg(10, 5, 0)),
            "a key repeated on the left"
        );
        assert!(differs(&seg(10, 5, 0), &seg(10, 5, 1)), "... on the right");
        assert!(differs(&seg(10, 5, 1), &seg(10, 5, 1)), "... on both");
    }

    #[test]
    fn adjacent_segments_are_read_as_one_range() {
        let seg = |low, high| Segment {
            low,
            high,
            left_rows: 1,
            right_rows: 1,
        };
        assert_eq!(
            coalesce(&[seg(0, 9), seg(10, 19), seg(30, 39), seg(40, 40)]),
            vec![(0, 19), (30, 40)]
        );
    }

    #[test]
    fn the_range_of_both_sides_holds_every_key() {
        assert_eq!(union(Some((5, 9)), Some((1, 7))), Some((1, 9)));
        assert_eq!(union(None, Some((1, 7))), Some((1, 7)));
        assert_eq!(union(None, None), None);
    }

    /// One side's totals over the keys of `rows` in `[low, high]` (their places as
    /// `totals_sql` computes them), with `sum` as its hash sum.
    fn totals(rows: impl IntoIterator<Item = i64>, (low, high): (i64, i64), sum: i128) -> Totals {
        let shift = key_shift(low, high);
        let mut t = Totals::default();
        for k in rows {
            let place = i128::from(k >> shift) - i128::from(low >> shift);
            t.summary.rows += 1;
            t.key_sum += place;
            t.key_squares += place * place;
        }
        t.summary.sum = sum.into();
        t
    }

    #[test]
    fn an_outage_is_located_around_the_mean_of_the_keys_one_side_lacks() {
        let range = (1, 10_000_000);
        let left = totals(1..=10_000_000, range, 7);
        let outage = 6_000_001..=6_010_000;
        let right = totals((1..=10_000_000).filter(|k| !outage.contains(k)), range, 9);
        let (from, to) = around_the_difference(&(left, right), 1, 10_000_000, 10_000_000).unwrap();
        // The block spans mean ± 1.73σ; the guess ±2σ (σ = 2,887) and a key more.
        assert!(from <= 6_000_001 && to >= 6_010_000, "{from}..{to}");
        assert!(to - from < 11_600, "{from}..{to}");
        // The side with the extra rows may be either.
        assert_eq!(
            around_the_difference(&(right, left), 1, 10_000_000, 10_000_000),
            Some((from, to))
        );
        // A single row: its key, give or take one.
        let one = totals((1..=1000).filter(|&k| k != 500), (1, 1000), 0);
        let all = totals(1..=1000, (1, 1000), 1);
        assert_eq!(
            around_the_difference(&(all, one), 1, 1000, 1000),
            Some((499, 501))
        );
    }

    #[test]
    fn an_outage_among_keys_far_apart_is_located_in_whole_places() {
        // Keys 2^33 apart from near the bottom of a bigint: places are keys shifted by 16
        // (the range spans ~2^50), the window whole places.
        let low = i64::MIN + 5;
        let key = |i: i64| low + i * (1 << 33);
        let high = key(100_000);
        let left = totals((0..=100_000).map(key), (low, high), 1);
        let right = totals(
            (0..=100_000)
                .filter(|i| !(60_001..=60_500).contains(i))
                .map(key),
            (low, high),
            2,
        );
        let (from, to) = around_the_difference(&(left, right), low, high, 100_001).unwrap();
        assert!(from <= key(60_001) && to >= key(60_500), "{from}..{to}");
        assert!(to - from < 600 * (1 << 33), "{from}..{to}");
        assert!(from >= low && to <= high);
    }

    #[test]
    fn spread_out_or_balanced_differences_are_not_located() {
        let range = (1, 100_000);
        let all = totals(1..=100_000, range, 0);
        // Every hundredth key lacking: the range around them would hold every row.
        let spread = totals((1..=100_000).filter(|k| k % 100 != 0), range, 1);
        assert_eq!(
            around_the_difference(&(all, spread), 1, 100_000, 100_000),
            None
        );
        // As many rows as the other side lacks, or values changed in place: equal counts.
        let mut changed = all;
        changed.summary.sum = 5.into();
        assert_eq!(
            around_the_difference(&(all, changed), 1, 100_000, 100_000),
            None
        );
        // Rows lacking at one end and extra at the other: sums no one kind makes.
        let wide = (1, 100_010);
        let mixed = totals((11..=100_000).chain(100_001..=100_005), wide, 1);
        let all_wide = totals(1..=100_000, wide, 0);
        assert_eq!(
            around_the_difference(&(all_wide, mixed), 1, 100_010, 100_000),
            None
        );
        let mixed = totals(
            (1..=49_990).chain(50_001..=100_000).chain([50_000]),
            wide,
            1,
        );
        let doubled = totals((1..=100_000).chain(1..=20), wide, 0);
        assert_eq!(
            around_the_difference(&(doubled, mixed), 1, 100_010, 100_000),
            None
        );
    }

    #[test]
    fn the_rest_is_the_whole_less_the_part_unless_the_part_holds_more() {
        let whole = totals(1..=100, (1, 100), 50);
        let part = totals(41..=50, (1, 100), 20);
        let rest = less(&whole, &part).unwrap();
        assert_eq!(rest.summary.rows, 90);
        assert_eq!(rest.summary.sum.get(), 30);
        assert_eq!(rest, totals((1..=40).chain(51..=100), (1, 100), 30));
        assert_eq!(less(&part, &whole), None);
    }

    #[test]
    fn open_keys_in_range_become_sorted_ranges_with_neighbours_joined() {
        let keys: Vec<serde_json::Value> = [
            serde_json::json!([7]),
            serde_json::json!([5]),
            serde_json::json!([6]),
            serde_json::json!([6]),
            serde_json::json!([20]),
            serde_json::json!([1000]),
            serde_json::json!(["a"]),
            serde_json::json!([1, 2]),
        ]
        .into();
        assert_eq!(known_keys(&keys, 1, 100), vec![(5, 7), (20, 20)]);
        assert_eq!(
            merged(&[(1, 5), (3, 9), (10, 10), (12, 20)]),
            vec![(1, 10), (12, 20)]
        );
    }
}

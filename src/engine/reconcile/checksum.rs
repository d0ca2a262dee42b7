//! Checksum mode: each database summarises segments of the key range (row count, sum of row
//! hashes, repeated keys; see `source::checksum`), and only segments whose summaries differ
//! are split again, down to a size where reading them is cheaper than splitting; those are
//! merged row by row, exactly as a full stream would merge them.
//!
//! Why the result is a full stream's: a key lies in exactly one segment. A segment whose two
//! summaries are equal holds the same rows on both sides (the hash forms never hash unequal
//! values alike; the sums collide with a chance of about 2^-64) and no repeated key, so the
//! merge would report nothing there; every other segment is merged. Rows with a NULL key are
//! counted, never compared, as in a stream. A side is not read in one snapshot, though: each
//! summary and each segment read is its own statement, so a row changed during the run is
//! seen as it was when its segment was read (as two sides in two databases always are).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::config::SourceKind;
use crate::domain::{CompareMethod, Compared, Expect, Invariant, ReconcileMode, ReconcileSpec};
use crate::source::{
    Flavor, KeyRange, RowHash, SegmentSummary, Source, SourceError, Sources, Summary,
    SummaryRequest, index_of,
};

use super::merge;
use crate::engine::{EngineError, Tally};

/// Segments of the first split of the key range.
const FIRST_SPLIT: u64 = 64;
/// Segments a differing segment is split into.
const SPLIT: u64 = 32;
/// A differing segment with at most this many rows on each side is read rather than split
/// again: a 1,024th of the larger side, within these bounds (a summary costs a round trip
/// and a pass over the segment's rows in each database; reading a small segment costs little
/// more).
const LEAF_ROWS: std::ops::RangeInclusive<u64> = 256..=16_384;
const LEAF_FRACTION: u64 = 1024;
/// Segments sampled before an `auto` run commits to checksums, and how many of them may
/// differ before it streams instead (differences everywhere: every segment would be read).
const SAMPLES: u64 = 8;
const SAMPLES_DIFFERING_TO_STREAM: u64 = SAMPLES / 2;
/// A sampled segment spans this fraction of the key range.
const SAMPLE_FRACTION: i128 = 1024;

pub(super) enum Outcome {
    /// Compared by checksums; the violations are reported and the stats set.
    Checksummed(Compared),
    /// The invariant cannot be checksummed, and why.
    Unfit(String),
    /// It could be, but a sample says streaming costs less (`auto` only), and why.
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
    left: &'a Source,
    right: &'a Source,
    left_hash: RowHash,
    right_hash: RowHash,
    left_may_repeat: bool,
    right_may_repeat: bool,
    key: crate::domain::ColumnName,
    segments: u64,
    /// How many of the sampled segments differed (`auto` only).
    sampled_differing: u64,
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
    let left = sources.get(&spec.left.source)?;
    let right = sources.get(&spec.right.source)?;
    if left.kind() == SourceKind::Sqlite && right.kind() == SourceKind::Sqlite {
        return Ok(Outcome::Unfit(
            "both sides are SQLite files, whose summaries trueup computes by reading every row: streaming them costs less".into(),
        ));
    }
    // In `auto`, a checksum attempt that fails before anything is reported (an engine
    // without window functions, an older server) leaves the run to the stream, which reads
    // the rows itself and fails as any read does if they cannot be read; told to checksum,
    // the failure is the run's.
    macro_rules! attempt {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return fall_back(spec.mode, EngineError::from(e)),
            }
        };
    }
    let Some(flavor) = attempt!(flavor(left, right).await) else {
        return Ok(Outcome::Unfit(format!(
            "sources `{}` and `{}` write the same values differently (another byte order, encoding or version)",
            left.name(),
            right.name()
        )));
    };
    let (ld, rd) = attempt!(tokio::try_join!(
        left.describe(&spec.left.query),
        right.describe(&spec.right.query)
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
    // Counting repeated keys costs as much as hashing: skipped where a unique index proves
    // there are none.
    let (left_unique, right_unique) = attempt!(tokio::try_join!(
        left.key_unique(&spec.left.query, &ld, lk),
        right.key_unique(&spec.right.query, &rd, rk)
    ));
    let bounds = match within {
        Some(range) => Some(range),
        None => {
            let (lb, rb) = attempt!(tokio::try_join!(
                left.key_bounds(&spec.left.query, &ld.columns[lk]),
                right.key_bounds(&spec.right.query, &rd.columns[rk])
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
        left,
        right,
        left_hash,
        right_hash,
        left_may_repeat: !left_unique,
        right_may_repeat: !right_unique,
        key: key.clone(),
        segments: 0,
        sampled_differing: 0,
        count_null_keys: within.is_none(),
    };

    // Nothing is reported before every summary is in, so a value found on the way to have
    // no checksum form (a SQLite side's, hashed per value) still leaves the stream to it all.
    let Found {
        mut leaves,
        rows_left,
        rows_right,
        null_keys,
    } = match sides.differing_leaves(low, high).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return Ok(Outcome::NotWorthIt(format!(
                "{} of {SAMPLES} sampled segments differ, so nearly every segment would be read: streaming costs less",
                sides.sampled_differing
            )));
        }
        Err(EngineError::Source(e @ SourceError::NoCanonicalForm { .. })) => {
            return Ok(Outcome::Unfit(e.to_string()));
        }
        Err(e) => return fall_back(spec.mode, e),
    };

    // Read the differing leaves, adjacent ones as one range, in key order.
    leaves.sort_by_key(|s| s.low);
    let mut rows_streamed = 0;
    for (low, high) in coalesce(&leaves) {
        let read = merge::merge(
            inv,
            spec,
            sources,
            due_before,
            &[],
            merge::Keys::Between(low, high),
            tally,
        )
        .await?;
        rows_streamed += read.rows_left + read.rows_right;
    }
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

/// What the summaries found: the smallest differing segments, and the rows of each side (NULL
/// keys included) and the NULL keys of both.
struct Found {
    leaves: Vec<Segment>,
    rows_left: u64,
    rows_right: u64,
    null_keys: u64,
}

impl Sides<'_> {
    /// Summarises `[low, high]`, then splits what differs until it is small enough to read;
    /// `None` when `auto`'s sample says to stream.
    async fn differing_leaves(
        &mut self,
        low: i64,
        high: i64,
    ) -> Result<Option<Found>, EngineError> {
        if self.spec.mode == ReconcileMode::Auto {
            self.sampled_differing = self.sample(low, high).await?;
            if self.sampled_differing >= SAMPLES_DIFFERING_TO_STREAM {
                return Ok(None);
            }
        }

        // The first split, over every key (and the NULL keys, counted once).
        let mut differing = Vec::new();
        let (mut rows_left, mut rows_right, mut null_keys) = (0, 0, 0);
        for (i, (low, high)) in halves(low, high).into_iter().enumerate() {
            let (l, r) = self
                .summarize(low, high, FIRST_SPLIT, i == 0 && self.count_null_keys)
                .await?;
            null_keys += l.null_keys + r.null_keys;
            rows_left += l.null_keys + l.buckets.values().map(|s| s.rows).sum::<u64>();
            rows_right += r.null_keys + r.buckets.values().map(|s| s.rows).sum::<u64>();
            differing.extend(differing_segments(low, high, FIRST_SPLIT, &l, &r));
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
            let (l, r) = self
                .summarize(segment.low, segment.high, SPLIT, false)
                .await?;
            differing.extend(differing_segments(segment.low, segment.high, SPLIT, &l, &r));
        }
        Ok(Some(Found {
            leaves,
            rows_left,
            rows_right,
            null_keys,
        }))
    }

    /// Summarises `[low, high]` on both sides at once, in `buckets` segments.
    async fn summarize(
        &mut self,
        low: i64,
        high: i64,
        buckets: u64,
        null_keys: bool,
    ) -> Result<(Summary, Summary), EngineError> {
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
        let (lq, rq) = (
            request(&self.spec.left.query, &self.left_hash, self.left_may_repeat),
            request(
                &self.spec.right.query,
                &self.right_hash,
                self.right_may_repeat,
            ),
        );
        let (l, r) = tokio::try_join!(self.left.summarize(&lq), self.right.summarize(&rq))?;
        let compared: std::collections::BTreeSet<&u64> =
            l.buckets.keys().chain(r.buckets.keys()).collect();
        self.segments += compared.len() as u64;
        Ok((l, r))
    }

    /// How many of [`SAMPLES`] small segments spread over `[low, high]` differ.
    async fn sample(&mut self, low: i64, high: i64) -> Result<u64, EngineError> {
        let span = i128::from(high) - i128::from(low) + 1;
        let width = (span / SAMPLE_FRACTION).max(1);
        let step = span / i128::from(SAMPLES);
        let mut differing = 0;
        for i in 0..i128::from(SAMPLES) {
            let start = i128::from(low) + i * step;
            let end = (start + width - 1).min(i128::from(high));
            let (start, end) = (start as i64, end as i64);
            let (l, r) = self.summarize(start, end, 1, false).await?;
            if l.buckets.get(&0) != r.buckets.get(&0)
                || !no_repeats(l.buckets.get(&0))
                || !no_repeats(r.buckets.get(&0))
            {
                differing += 1;
            }
        }
        Ok(differing)
    }
}

fn no_repeats(s: Option<&SegmentSummary>) -> bool {
    s.is_none_or(|s| s.repeats == 0)
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

/// The buckets whose summaries differ between the sides, or that repeat a key on a side.
fn differing_segments(
    low: i64,
    high: i64,
    buckets: u64,
    left: &Summary,
    right: &Summary,
) -> Vec<Segment> {
    let mut all: BTreeMap<u64, (SegmentSummary, SegmentSummary)> = BTreeMap::new();
    for (b, s) in &left.buckets {
        all.entry(*b).or_default().0 = *s;
    }
    for (b, s) in &right.buckets {
        all.entry(*b).or_default().1 = *s;
    }
    all.into_iter()
        .filter(|(_, (l, r))| l != r || l.repeats > 0 || r.repeats > 0)
        .map(|(b, (l, r))| {
            let (low, high) = bucket_range(low, high, buckets, b);
            Segment {
                low,
                high,
                left_rows: l.rows,
                right_rows: r.rows,
            }
        })
        .collect()
}

/// Sorted segments as ranges, adjacent ones joined.
fn coalesce(sorted: &[Segment]) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for s in sorted {
        match out.last_mut() {
            Some((_, high)) if i128::from(*high) + 1 == i128::from(s.low) => *high = s.high,
            _ => out.push((s.low, s.high)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(buckets: &[(u64, u64, i128, u64)]) -> Summary {
        Summary {
            buckets: buckets
                .iter()
                .map(|&(b, rows, sum, repeats)| (b, SegmentSummary { rows, sum, repeats }))
                .collect(),
            null_keys: 0,
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
        let left = summary(&[
            (0, 10, 5, 0),
            (1, 10, 5, 0),
            (2, 10, 5, 0),
            (3, 10, 5, 1),
            (4, 3, 1, 0),
        ]);
        let right = summary(&[
            (0, 10, 5, 0),
            (1, 9, 5, 0),
            (2, 10, 6, 0),
            (3, 10, 5, 1),
            (5, 1, 1, 0),
        ]);
        let lows: Vec<i64> = differing_segments(0, 59, 6, &left, &right)
            .iter()
            .map(|s| s.low)
            .collect();
        assert_eq!(lows, vec![10, 20, 30, 40, 50]);
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
}

//! `reconcile`: two sides matched row by row on a key. The merge join (`merge.rs`) compares
//! them, over every row (stream mode) or over only the key ranges whose segment checksums,
//! computed by each database, differ (`checksum.rs`), or over only the keys whose rows
//! changed (`incremental.rs`). All find the same violations on the keys they cover.

mod checksum;
mod incremental;
mod merge;

use chrono::{DateTime, Utc};

use crate::domain::{CompareMethod, Compared, Invariant, ReconcileMode, ReconcileSpec};
use crate::source::Sources;

use super::{EngineError, KeyFilter, Pass, Tally};

/// Each side's change mark now (an incremental reconcile's, read before a split run).
pub(super) async fn marks(
    inv: &Invariant,
    spec: &ReconcileSpec,
    inc: &crate::domain::Incremental,
    sources: &Sources,
) -> Result<crate::domain::Marks, EngineError> {
    incremental::marks(inv, spec, inc, sources).await
}

pub(super) async fn run(
    inv: &Invariant,
    spec: &ReconcileSpec,
    sources: &Sources,
    due_before: Option<DateTime<Utc>>,
    pass: Pass,
    filter: &[KeyFilter],
    tally: &mut Tally<'_>,
) -> Result<(), EngineError> {
    let sources = &sources
        .for_reconcile(&spec.left.source, &spec.right.source)
        .await?;
    // A re-check of given keys is no run of its own: it reads no marks.
    if let Some(inc) = spec.incremental.as_ref().filter(|_| filter.is_empty()) {
        tally.stats.marks = Some(incremental::marks(inv, spec, inc, sources).await?);
        if let Pass::Changed { left, right } = pass {
            let changes = (left, right);
            match incremental::run(inv, spec, inc, sources, due_before, changes, tally).await? {
                incremental::Outcome::Covered => return Ok(()),
                incremental::Outcome::TooMany(why) => {
                    tracing::info!(invariant = %inv.name, "a full pass instead of an incremental one: {why}");
                }
            }
        }
    }
    compare(inv, spec, sources, due_before, filter, None, tally).await
}

/// Evaluates one segment of a split run: the keys from `low` to `high`, compared as the mode
/// says, as the whole run would compare them.
pub(super) async fn run_segment(
    inv: &Invariant,
    spec: &ReconcileSpec,
    sources: &Sources,
    due_before: Option<DateTime<Utc>>,
    (low, high): (i64, i64),
    tally: &mut Tally<'_>,
) -> Result<(), EngineError> {
    let sources = &sources
        .for_reconcile(&spec.left.source, &spec.right.source)
        .await?;
    compare(
        inv,
        spec,
        sources,
        due_before,
        &[],
        Some((low, high)),
        tally,
    )
    .await
}

/// The key ranges of a split run's `segments`: both sides' key range cut into spans of equal
/// width (fewer when it holds fewer keys; none when no row has a key).
pub(super) async fn split(
    spec: &ReconcileSpec,
    sources: &Sources,
    segments: u32,
) -> Result<Vec<(i64, i64)>, EngineError> {
    let unsplittable = |why: String| EngineError::Unsplittable { why };
    let [key] = spec.key.as_slice() else {
        return Err(unsplittable("the key has several columns".into()));
    };
    let left = sources.get(&spec.left.source)?;
    let right = sources.get(&spec.right.source)?;
    let (Some(left_sql), Some(right_sql)) = (spec.left.query.sql(), spec.right.query.sql()) else {
        return Err(unsplittable(
            "a side is an HTTP API, whose keys no database can split".into(),
        ));
    };
    let (ld, rd) = tokio::try_join!(left.describe(left_sql), right.describe(right_sql))?;
    let column = |d: &crate::source::Described, side: &str| {
        let i = crate::source::index_of(&d.columns, key.as_str()).ok_or_else(|| {
            unsplittable(format!("the {side} query returns no key column `{key}`"))
        })?;
        d.integer_key(i).map_err(unsplittable)?;
        Ok::<_, EngineError>(d.columns[i].clone())
    };
    let (lk, rk) = (column(&ld, "left")?, column(&rd, "right")?);
    let (lb, rb) = tokio::try_join!(
        left.key_bounds(left_sql, &lk),
        right.key_bounds(right_sql, &rk)
    )?;
    let Some((low, high)) = checksum::union(lb, rb) else {
        return Ok(Vec::new());
    };
    let n = u64::from(segments.max(1));
    Ok((0..n)
        .map(|b| checksum::bucket_range(low, high, n, b))
        .filter(|(l, h)| l <= h)
        .collect())
}

/// Compares both sides over every key, or `within` a segment's.
async fn compare(
    inv: &Invariant,
    spec: &ReconcileSpec,
    sources: &Sources,
    due_before: Option<DateTime<Utc>>,
    filter: &[KeyFilter],
    within: Option<(i64, i64)>,
    tally: &mut Tally<'_>,
) -> Result<(), EngineError> {
    // A re-check of given keys reads only those rows: there is nothing to checksum.
    let streamed_because = if !filter.is_empty() || spec.mode == ReconcileMode::Stream {
        None
    } else {
        match checksum::run(inv, spec, sources, due_before, within, tally).await? {
            checksum::Outcome::Checksummed(compared) => {
                tally.stats.compared = Some(compared);
                return Ok(());
            }
            checksum::Outcome::Unfit(why) if spec.mode == ReconcileMode::Checksum => {
                return Err(EngineError::NoChecksum { why });
            }
            checksum::Outcome::Unfit(why) | checksum::Outcome::NotWorthIt(why) => Some(why),
        }
    };
    let segment = within.map(|range| [range]);
    let keys = match &segment {
        Some(range) => merge::Keys::Ranges(range),
        None => merge::Keys::All,
    };
    let read = merge::merge(inv, spec, sources, due_before, filter, keys, tally).await?;
    tally.stats.rows_left = read.rows_left;
    tally.stats.rows_right = read.rows_right;
    tally.stats.null_keys = read.null_keys;
    tally.stats.compared = Some(Compared {
        method: CompareMethod::Stream,
        streamed_because,
        segments: 0,
        segments_streamed: 0,
        rows_streamed: read.rows_left + read.rows_right,
    });
    Ok(())
}

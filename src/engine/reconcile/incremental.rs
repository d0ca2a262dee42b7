//! Incremental runs: only the keys whose rows changed. Each side with a change column gives
//! the keys of its rows whose change column reached the run's `since` (the last watermark,
//! less the lookback and the grace period) and, with a grace period, those whose time column
//! did (rows that may have become due); both sides of those keys, and only those, are
//! merged, a batch of keys at a time, exactly as a full stream merges them. The keys are
//! handed to the sink as the run's coverage: a violation resolves only on a key the run
//! covered.
//!
//! What such a run cannot see is what leaves no changed row: a deleted row (its key has no
//! row left to change), a row written without moving its change column, a side without a
//! change column. The full pass every `full_every` sees them.

use chrono::{DateTime, Utc};

use crate::domain::{ColumnName, Compared, Coverage, Incremental, Invariant, Marks, QuerySide};
use crate::domain::{ReconcileSpec, Value};
use crate::engine::cursor::compare_keys;
use crate::engine::{Changes, EngineError, Tally};
use crate::source::{ChangedSince, KeySet, ReadRequest, Sources};

use super::merge;

/// More changed keys than this, and a run reads every row instead: past this many, the
/// lookups cost more than a full pass (checksummed where it can be), and the keys would fill
/// memory.
const MAX_CHANGED_KEYS: usize = 200_000;

/// Each side's latest change as the run begins, read before anything else: a row changed
/// after this is read by the next run.
pub(super) async fn marks(
    inv: &Invariant,
    spec: &ReconcileSpec,
    inc: &Incremental,
    sources: &Sources,
) -> Result<Marks, EngineError> {
    let latest = |side: &QuerySide, column: Option<&ColumnName>| {
        let column = column.cloned();
        let (source, query) = (side.source.clone(), side.query.clone());
        async move {
            match column {
                None => Ok::<_, EngineError>(None),
                Some(c) => {
                    let source = sources.get(&source)?;
                    let sql = source.sql_of(&query, "an incremental reconcile's change column")?;
                    Ok(source.latest_change(sql, &c).await?)
                }
            }
        }
    };
    let (left, right) = tokio::try_join!(
        latest(&spec.left, inc.left.as_ref()),
        latest(&spec.right, inc.right.as_ref()),
    )?;
    Ok(Marks {
        definition: inv.definition_hash(),
        left,
        right,
    })
}

pub(super) enum Outcome {
    /// The changed keys were merged; the stats are set.
    Covered,
    /// Too many rows changed for an incremental run to pay, and why: read everything.
    TooMany(String),
}

pub(super) async fn run(
    inv: &Invariant,
    spec: &ReconcileSpec,
    inc: &Incremental,
    sources: &Sources,
    due_before: Option<DateTime<Utc>>,
    (left, right): (Changes, Changes),
    tally: &mut Tally<'_>,
) -> Result<Outcome, EngineError> {
    let (left_keys, right_keys) = tokio::try_join!(
        changed_keys(spec, &spec.left, inc.left.as_ref(), left, sources),
        changed_keys(spec, &spec.right, inc.right.as_ref(), right, sources),
    )?;
    // A row still inside its grace period at the last run is due now whether or not it
    // changed since, and its change column may be far older than its time column (a payment
    // dated ahead, a writer's clock ahead): the keys of rows whose time column lies between
    // the earliest `since` and this run's cutoff are read too. A row not yet due last time
    // has its time after the last run's start less the grace, so after a side's mark less the
    // lookback and the grace, as long as that side's clock is not ahead of trueup's by more
    // than the lookback (the earliest: if either side's is not).
    let due_since = [left, right]
        .into_iter()
        .filter_map(|c| match c {
            Changes::Since(t) => Some(t),
            Changes::All | Changes::Unwatched => None,
        })
        .min()
        .filter(|_| inv.grace.is_some());
    let (left_due, right_due) = match (due_since, due_before, &inv.time_column) {
        (Some(since), Some(until), Some(column)) => {
            let bounds = ChangedSince {
                column: column.clone(),
                since,
                until: Some(until),
            };
            tokio::try_join!(
                due_keys(spec, &spec.left, &bounds, sources),
                due_keys(spec, &spec.right, &bounds, sources),
            )?
        }
        _ => (Some(Vec::new()), Some(Vec::new())),
    };
    let (
        Some((left_keys, left_nulls)),
        Some((right_keys, right_nulls)),
        Some(left_due),
        Some(right_due),
    ) = (left_keys, right_keys, left_due, right_due)
    else {
        return Ok(Outcome::TooMany(format!(
            "more than {MAX_CHANGED_KEYS} rows changed (or became due) since the last run: a full pass costs less"
        )));
    };
    let keys = union(union(left_keys, right_keys), union(left_due, right_due));

    let (mut rows_left, mut rows_right) = (0, 0);
    for batch in keys.chunks(KeySet::MAX_PER_READ) {
        let set = KeySet {
            columns: spec.key.clone(),
            keys: batch.to_vec(),
        };
        let read = merge::merge(
            inv,
            spec,
            sources,
            due_before,
            &[],
            merge::Keys::In(&set),
            tally,
        )
        .await?;
        rows_left += read.rows_left;
        rows_right += read.rows_right;
        // As `Violation::key_json` writes a key.
        let covered: Vec<serde_json::Value> = batch
            .iter()
            .map(|k| serde_json::Value::Array(k.iter().map(Value::to_canonical_json).collect()))
            .collect();
        tally.sink.cover(&covered).await?;
    }
    let since = |c: Changes| match c {
        Changes::Since(t) => Some(t),
        Changes::All | Changes::Unwatched => None,
    };
    let stats = &mut *tally.stats;
    stats.rows_left = rows_left;
    stats.rows_right = rows_right;
    stats.null_keys = left_nulls + right_nulls;
    stats.coverage = Coverage::Changed {
        keys: keys.len() as u64,
        left_since: since(left),
        right_since: since(right),
    };
    stats.compared = Some(Compared {
        rows_streamed: rows_left + rows_right,
        ..Compared::default()
    });
    Ok(Outcome::Covered)
}

/// The keys of one side's changed rows, in key order, and how many changed rows had a NULL
/// key; `None`: more than [`MAX_CHANGED_KEYS`].
async fn changed_keys(
    spec: &ReconcileSpec,
    side: &QuerySide,
    column: Option<&ColumnName>,
    changes: Changes,
    sources: &Sources,
) -> Result<Option<(Vec<Vec<Value>>, u64)>, EngineError> {
    let changed_since = match (changes, column) {
        (Changes::Unwatched, _) | (_, None) => return Ok(Some((Vec::new(), 0))),
        (Changes::All, Some(_)) => None,
        (Changes::Since(since), Some(c)) => Some(ChangedSince {
            column: c.clone(),
            since,
            until: None,
        }),
    };
    read_keys(spec, side, changed_since, sources).await
}

/// The keys of `side`'s rows (those `changed_since` keeps), in key order, and how many had a
/// NULL key; `None`: more than [`MAX_CHANGED_KEYS`].
async fn read_keys(
    spec: &ReconcileSpec,
    side: &QuerySide,
    changed_since: Option<ChangedSince>,
    sources: &Sources,
) -> Result<Option<(Vec<Vec<Value>>, u64)>, EngineError> {
    let mut rows = sources
        .get(&side.source)?
        .read(ReadRequest {
            query: side.query.clone(),
            needed: Vec::new(),
            order_by: spec.key.clone(),
            filter: Vec::new(),
            // Only the keys are kept: long values may stay in the database.
            digest_long_except: Some(Vec::new()),
            key_ranges: None,
            keys: None,
            changed_since,
        })
        .await?;
    let at: Vec<usize> = spec
        .key
        .iter()
        .map(|k| {
            rows.index_of(k.as_str())
                .ok_or_else(|| crate::source::SourceError::MissingColumn {
                    source_name: side.source.clone(),
                    column: k.to_string(),
                    role: "a key",
                    available: rows.columns().join(", "),
                })
        })
        .collect::<Result<_, _>>()?;
    let (mut keys, mut nulls) = (Vec::new(), 0);
    while let Some(batch) = rows.next_batch().await {
        for row in batch? {
            let key: Vec<Value> = at.iter().map(|&i| row[i].clone()).collect();
            if key.iter().any(|v| matches!(v, Value::Null)) {
                nulls += 1;
            } else if keys.last() != Some(&key) {
                if keys.len() == MAX_CHANGED_KEYS {
                    return Ok(None);
                }
                keys.push(key);
            }
        }
    }
    Ok(Some((keys, nulls)))
}

/// The keys of `side`'s rows whose time column lies within `bounds`, in key order; none where
/// the side is no SQL query (whose columns are known only once read: there a row's change
/// column must not lag its time column by more than the lookback), does not return the time
/// column, or returns it as no instant (a date: see README); `None`: more than
/// [`MAX_CHANGED_KEYS`].
async fn due_keys(
    spec: &ReconcileSpec,
    side: &QuerySide,
    bounds: &ChangedSince,
    sources: &Sources,
) -> Result<Option<Vec<Vec<Value>>>, EngineError> {
    let Some(sql) = side.query.sql() else {
        return Ok(Some(Vec::new()));
    };
    let described = sources.get(&side.source)?.describe(sql).await?;
    let Some(i) = crate::source::index_of(&described.columns, bounds.column.as_str()) else {
        return Ok(Some(Vec::new()));
    };
    if !described.holds_instants(i) {
        return Ok(Some(Vec::new()));
    }
    let keys = read_keys(spec, side, Some(bounds.clone()), sources).await?;
    // (Rows with a NULL key are counted by the change column's read.)
    Ok(keys.map(|(keys, _)| keys))
}

/// The keys of both sides, each in key order, as one list in key order without repeats.
fn union(left: Vec<Vec<Value>>, right: Vec<Vec<Value>>) -> Vec<Vec<Value>> {
    let width = left.first().or(right.first()).map_or(0, Vec::len);
    let idx: Vec<usize> = (0..width).collect();
    let mut out = Vec::with_capacity(left.len().max(right.len()));
    let (mut l, mut r) = (left.into_iter().peekable(), right.into_iter().peekable());
    loop {
        let next = match (l.peek(), r.peek()) {
            (None, None) => break,
            (Some(_), None) => l.next(),
            (None, Some(_)) => r.next(),
            (Some(a), Some(b)) => match compare_keys(a, &idx, b, &idx) {
                std::cmp::Ordering::Less => l.next(),
                std::cmp::Ordering::Greater => r.next(),
                std::cmp::Ordering::Equal => {
                    r.next();
                    l.next()
                }
            },
        };
        if let Some(key) = next
            && out
                .last()
                .is_none_or(|last: &Vec<Value>| compare_keys(last, &idx, &key, &idx).is_ne())
        {
            out.push(key);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ids: &[i64]) -> Vec<Vec<Value>> {
        ids.iter().map(|i| vec![Value::Int(*i)]).collect()
    }

    #[test]
    fn the_union_of_two_sides_keys_is_in_key_order_without_repeats() {
        assert_eq!(
            union(keys(&[1, 3, 5, 7]), keys(&[2, 3, 4, 7, 9])),
            keys(&[1, 2, 3, 4, 5, 7, 9])
        );
        assert_eq!(union(keys(&[]), keys(&[2, 4])), keys(&[2, 4]));
        assert_eq!(union(keys(&[5]), keys(&[])), keys(&[5]));
        assert!(union(keys(&[]), keys(&[])).is_empty());
    }
}

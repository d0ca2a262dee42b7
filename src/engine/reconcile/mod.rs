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

pub(super) async fn run(
    inv: &Invariant,
    spec: &ReconcileSpec,
    sources: &Sources,
    due_before: Option<DateTime<Utc>>,
    pass: Pass,
    filter: &[KeyFilter],
    tally: &mut Tally<'_>,
) -> Result<(), EngineError> {
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
    // A re-check of given keys reads only those rows: there is nothing to checksum.
    let streamed_because = if !filter.is_empty() || spec.mode == ReconcileMode::Stream {
        None
    } else {
        match checksum::run(inv, spec, sources, due_before, tally).await? {
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
    let read = merge::merge(
        inv,
        spec,
        sources,
        due_before,
        filter,
        merge::Keys::All,
        tally,
    )
    .await?;
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

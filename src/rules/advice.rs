//! Advice on valid invariants: what will work but cost more than the author may expect.
//! `trueup validate` prints it under the files' verdict; nothing here refuses a file.

use super::Known;
use crate::config::SourceClass;
use crate::domain::{Invariant, Read};

/// One note per side that every action's re-check reads in full: an API or stream side
/// without a `lookup`, on an invariant whose actions re-check their key before acting.
pub fn advice(invariant: &Invariant, known: &Known) -> Vec<String> {
    // Manual steps are done by people: only executed actions re-check their key.
    let executed = invariant
        .compensate
        .values()
        .any(|c| !matches!(c, crate::domain::Compensation::Manual(_)));
    if !executed && invariant.replay.is_none() {
        return Vec::new();
    }
    let sides = invariant.sides();
    let mut notes = Vec::new();
    for (name, side) in sides {
        let remedy = match &side.query {
            Read::Sql(_) => continue,
            // An event log is trueup's own store, indexed by event id.
            Read::Stream(_) if side.source.log().is_some() => continue,
            Read::Http(request) if request.lookup.is_none() => {
                "add `request.lookup: {path: \"…/{{key.…}}\"}` so that it is one request"
            }
            Read::Stream(_) if known.sources.get(&side.source) == Some(&SourceClass::Redis) => {
                "a Redis stream has no index by key; keep such an invariant's plans small, or compare against a table the stream's consumer writes"
            }
            Read::Stream(stream) if stream.lookup.is_none() => {
                "with one subject per key, add `stream.lookup: {subject: \"….{{key.…}}\"}` so that it is one request"
            }
            Read::Http(_) | Read::Stream(_) => continue,
        };
        notes.push(format!(
            "invariant `{}`: every action re-checks its key first, and the {name} side (source `{}`) has no lookup, so each re-check reads all of it again; {remedy}",
            invariant.name, side.source
        ));
    }
    notes
}

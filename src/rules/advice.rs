//! Advice on valid invariants: what will work but cost more than the author may expect.
//! `trueup validate` prints it under the files' verdict; nothing here refuses a file.

use super::Known;
use crate::config::SourceClass;
use crate::domain::{Invariant, Read};

/// One note per event log with `retain` that an invariant without a `schedule` reads (the
/// log keeps every event since that invariant last ran), and one per side that every action's
/// re-check reads in full: an API or stream side without a `lookup`, on an invariant whose
/// actions re-check their key before acting.
pub fn advice(invariant: &Invariant, known: &Known) -> Vec<String> {
    let mut notes = Vec::new();
    if invariant.schedule.is_none() {
        for (_, side) in invariant.sides() {
            if let Some(log) = side
                .source
                .log()
                .filter(|_| known.retained_logs.contains(&side.source))
            {
                notes.push(format!(
                    "invariant `{}` reads event log `{log}` and has no `schedule`, so it runs only when asked (`trueup check`, or a run requested of `trueup serve`): the log's `retain` purges only events that each of its readers' last completed full run has judged, so `{log}` keeps every event since this invariant last ran, however old; give it a `schedule:` (like `schedule: \"*/5 * * * *\"`)",
                    invariant.name
                ));
            }
        }
    }
    // Manual steps are done by people: only executed actions re-check their key.
    let executed = invariant
        .compensate
        .values()
        .any(|c| !matches!(c, crate::domain::Compensation::Manual(_)));
    if !executed && invariant.replay.is_none() {
        return notes;
    }
    for (name, side) in invariant.sides() {
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

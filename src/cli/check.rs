use std::path::Path;

use crate::plan::Evaluation;

/// Rows from which `check` says why a reconcile streamed rather than checksummed.
const STREAMED_BECAUSE_FROM_ROWS: u64 = 100_000;

use super::output::{evidence, key, plural};
use super::{CheckArgs, EXIT_ERROR, EXIT_OK, EXIT_VIOLATIONS, Format};

pub(super) async fn run(config: Option<&Path>, args: CheckArgs) -> anyhow::Result<u8> {
    let app = match super::open_app(config).await? {
        Ok(app) => app,
        Err(code) => return Ok(code),
    };
    let outcomes = app
        .check(&args.invariant, &super::local_actor(), args.full)
        .await;
    app.close().await;
    let outcomes = outcomes?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&outcomes)?),
        Format::Table => print!("{}", render(&outcomes)),
    }
    Ok(exit_code(&outcomes))
}

pub(crate) fn exit_code(evaluations: &[Evaluation]) -> u8 {
    if evaluations.iter().any(|e| e.run.failed()) {
        EXIT_ERROR
    } else if evaluations.iter().any(|e| !e.run.holds()) {
        EXIT_VIOLATIONS
    } else {
        EXIT_OK
    }
}

/// The report `trueup check` prints.
pub(crate) fn render(evaluations: &[Evaluation]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for e in evaluations {
        let o = &e.run;
        let took = (o.finished_at - o.started_at).num_milliseconds() as f64 / 1000.0;
        let verdict = if o.failed() {
            "ERROR"
        } else if o.holds() {
            "OK   "
        } else {
            "FAIL "
        };
        let _ = writeln!(
            out,
            "{verdict} {}  ({}, run {}, {:.2}s)",
            o.invariant, o.severity, o.run_id, took
        );
        if let Some(err) = &o.error {
            let _ = writeln!(out, "      {err}");
            let _ = writeln!(
                out,
                "      nothing in the ledger changed; fix the cause and run again"
            );
            continue;
        }
        let s = &o.stats;
        let checksummed = s
            .compared
            .as_ref()
            .filter(|c| c.method == crate::domain::CompareMethod::Checksum);
        let rows = match checksummed {
            Some(c) => format!(
                "compared {} left / {} right rows by checksum ({} segments summarised, {} read: {} rows)",
                s.rows_left, s.rows_right, c.segments, c.segments_streamed, c.rows_streamed
            ),
            None if s.rows_right > 0 => {
                format!("read {} left / {} right rows", s.rows_left, s.rows_right)
            }
            None => format!("read {} rows", s.rows_left),
        };
        let _ = write!(out, "      {rows}");
        if s.not_yet_due > 0 {
            let _ = write!(out, "; {} not yet due (within grace)", s.not_yet_due);
        }
        if s.null_keys > 0 {
            let _ = write!(out, "; {} with a NULL key, not compared", s.null_keys);
        }
        let _ = writeln!(out);
        if let crate::domain::Coverage::Changed {
            keys,
            left_since,
            right_since,
        } = &s.coverage
        {
            let since: Vec<String> = [("left", left_since), ("right", right_since)]
                .into_iter()
                .filter_map(|(side, t)| {
                    t.map(|t| format!("{side} since {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                })
                .collect();
            let since = if since.is_empty() {
                String::new()
            } else {
                format!(" ({})", since.join(", "))
            };
            let _ = writeln!(
                out,
                "      incremental: only the {} of rows changed{since}; a full pass (`--full`) also sees deleted rows",
                plural(*keys, "key", "keys"),
            );
        }
        if let crate::domain::Coverage::Window { from } = &s.coverage {
            let _ = writeln!(
                out,
                "      window: only rows from {} on; older violations are left as they are",
                from.format("%Y-%m-%d %H:%M:%S UTC")
            );
        }
        if let Some(split) = &s.split {
            let taken_over = if split.taken_over > 0 {
                format!(
                    "; {} taken over from a worker that stopped answering",
                    plural(u64::from(split.taken_over), "segment", "segments")
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "      split into {} of the key range, evaluated by {}{taken_over}",
                plural(u64::from(split.segments), "segment", "segments"),
                split.workers.join(", ")
            );
        }
        // Why a large reconcile was read whole; on a small one the answer changes nothing.
        if let Some(why) = s
            .compared
            .as_ref()
            .and_then(|c| c.streamed_because.as_ref())
            && s.rows_left + s.rows_right >= STREAMED_BECAUSE_FROM_ROWS
        {
            let _ = writeln!(out, "      streamed, not checksummed: {why}");
        }
        if let Some(c) = o.change
            && (o.open_after > 0 || c.resolved > 0)
        {
            let uncovered = if c.uncovered > 0 {
                format!(
                    ", {} left as they were (on keys this run did not read, past its violation budget, or seen by a run begun after it)",
                    c.uncovered
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "      {} open: {} new, {} still open, {} reopened{uncovered}; {} resolved",
                plural(o.open_after, "violation", "violations"),
                c.new,
                c.still_open,
                c.reopened,
                c.resolved
            );
        }
        if !s.counts.is_empty() {
            let kinds: Vec<String> = s.counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = writeln!(out, "      by kind: {}", kinds.join(", "));
        }
        if s.truncated {
            let _ = writeln!(
                out,
                "      {} seen but only the first were stored (violation_budget); nothing was resolved in this run",
                s.observed
            );
        }
        for v in &o.samples {
            let _ = writeln!(
                out,
                "        {:<10} {:<12} {}",
                v.kind,
                key(&v.key),
                evidence(v)
            );
        }
        if o.samples.len() as u64 > 0 && o.open_after > o.samples.len() as u64 {
            let _ = writeln!(
                out,
                "        … `trueup violations --invariant {}` lists all {}",
                o.invariant, o.open_after
            );
        }
        match &e.proposal {
            Some(crate::plan::Proposal::Created { plan, actions }) => {
                let _ = writeln!(
                    out,
                    "      proposed plan {plan}: {} to compensate; review with `trueup plan show {plan}`",
                    plural(*actions, "action", "actions")
                );
            }
            Some(crate::plan::Proposal::Unchanged { plan }) => {
                let _ = writeln!(
                    out,
                    "      plan {plan} already proposes these compensations (`trueup plan show {plan}`)"
                );
            }
            Some(crate::plan::Proposal::Failed { error }) => {
                let _ = writeln!(out, "      no plan proposed: {error}");
            }
            _ => {}
        }
    }
    let outcomes: Vec<_> = evaluations.iter().map(|e| &e.run).collect();
    let failed = outcomes.iter().filter(|o| o.failed()).count();
    let holding = outcomes.iter().filter(|o| o.holds()).count();
    let violated = outcomes.len() - failed - holding;
    let open: u64 = outcomes.iter().map(|o| o.open_after).sum();
    let _ = writeln!(
        out,
        "\n{}: {holding} hold, {violated} violated ({}), {failed} could not be evaluated",
        plural(outcomes.len() as u64, "invariant", "invariants"),
        plural(open, "open violation", "open violations"),
    );
    out
}

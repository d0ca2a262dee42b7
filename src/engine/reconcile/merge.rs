//! The merge join of two key-ordered row streams, with one key group per side in memory:
//! over every row (stream mode), or over one key range (a checksummed segment that differs).

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::domain::{
    ColumnName, Invariant, ReconcileSpec, Value, ValueClass, Violation, ViolationKind,
};
use crate::source::{ChangedSince, KeyRanges, KeySet, Needed, ReadRequest, Row, Sources, index_of};

use crate::engine::KeyFilter;
use crate::engine::cursor::{Cursor, Group, compare_keys};
use crate::engine::{EngineError, Tally, not_yet_due, row_json};

pub(super) struct Plan {
    /// (name, left index, right index) of each compared column.
    pub(super) compare: Vec<(String, usize, usize)>,
    left_time: Option<usize>,
    right_time: Option<usize>,
    /// Per column, whether evidence keeps it whole (a template reads it).
    left_whole: Vec<bool>,
    right_whole: Vec<bool>,
}

/// What a merge read.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Read {
    pub(super) rows_left: u64,
    pub(super) rows_right: u64,
    pub(super) null_keys: u64,
}

/// Which keys a merge reads (besides a key filter).
#[derive(Debug, Clone, Copy)]
pub(super) enum Keys<'a> {
    All,
    /// The integer keys in these ranges, both bounds included, sorted and disjoint (a
    /// segment of a split run; a checksummed reconcile's differing segments, several to a
    /// read).
    Ranges(&'a [(i64, i64)]),
    /// These keys (changed ones, in an incremental run).
    In(&'a KeySet),
}

/// Merges the rows of both sides whose keys equal `filter` (all when empty) and are among
/// `keys`, reporting what differs to `tally`.
pub(super) async fn merge(
    inv: &Invariant,
    spec: &ReconcileSpec,
    sources: &Sources,
    due_before: Option<DateTime<Utc>>,
    filter: &[KeyFilter],
    keys: Keys<'_>,
    tally: &mut Tally<'_>,
) -> Result<Read, EngineError> {
    // The time column is required on the left (the upstream event's time: grace, replay
    // windows); on the right it is optional and, when returned, gives extra rows their time.
    let window_from = tally.window_from;
    let request = |query: &crate::domain::Read, side: crate::domain::Scope| {
        // A window selects rows by their time on both sides.
        let needs_time = side == crate::domain::Scope::Left || window_from.is_some();
        let mut needed: Vec<Needed> = spec
            .compare
            .iter()
            .flatten()
            .map(|c| Needed {
                column: c.clone(),
                role: crate::source::COMPARED,
            })
            .collect();
        if let Some(t) = inv.time_column.as_ref().filter(|_| needs_time) {
            needed.push(Needed {
                column: t.clone(),
                role: if side == crate::domain::Scope::Left {
                    "the time column"
                } else {
                    "the time column (the window selects rows on both sides by it)"
                },
            });
        }
        ReadRequest {
            query: query.clone(),
            needed,
            order_by: spec.key.clone(),
            filter: filter.to_vec(),
            // Long compared and shown values may stay in the database as digests; the
            // columns a template writes arrive whole.
            digest_long_except: Some(inv.template_fields(side)),
            key_ranges: match keys {
                Keys::Ranges(ranges) => Some(KeyRanges {
                    column: spec.key[0].clone(),
                    ranges: ranges.to_vec(),
                }),
                _ => None,
            },
            keys: match keys {
                Keys::In(set) => Some(set.clone()),
                _ => None,
            },
            changed_since: window_from
                .zip(inv.time_column.clone())
                .map(|(since, column)| ChangedSince {
                    column,
                    since,
                    until: None,
                }),
        }
    };
    let left_source = sources.get(&spec.left.source)?;
    let right_source = sources.get(&spec.right.source)?;
    // Both sides start at once: each query runs on its own connection while the merge reads.
    let (left, right) = tokio::try_join!(
        left_source.read(request(&spec.left.query, crate::domain::Scope::Left)),
        right_source.read(request(&spec.right.query, crate::domain::Scope::Right)),
    )?;
    let key_idx = |s: &crate::source::RowStream| -> Vec<usize> {
        spec.key
            .iter()
            .map(|k| s.index_of(k.as_str()).unwrap_or(0))
            .collect()
    };
    let (left_keys, right_keys) = (key_idx(&left), key_idx(&right));
    let mut left = Cursor::new(left, left_keys, "left");
    let mut right = Cursor::new(right, right_keys, "right");
    let plan = plan(inv, spec, left.columns(), right.columns())?;

    // With `at_least_one`, a key's right rows after the first are probed for one that
    // matches its left row as they are read (the group is not kept), so that a mismatch is
    // reported only when none does. So the right side holds only its group's first row until
    // the group is used: then the left row it is compared with is known.
    let probes = spec.expect.right_may_repeat() && !plan.compare.is_empty();
    let mut l = left.next_group().await?;
    let mut r = right.next().await?;
    // Looked up once, not per key group (test builds only).
    if crate::source::injected("engine.merge") {
        return Err(EngineError::Injected("the merge stopped".into()));
    }
    loop {
        let order = match (&l, &r) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(lg), Some(first)) => cross_compare(spec, &left, &lg.first, &right, first)?,
        };
        match order {
            Ordering::Less => {
                if let Some(lg) = l.take() {
                    left_only(spec, &plan, &left, lg, due_before, tally).await?;
                }
                l = left.next_group().await?;
            }
            Ordering::Greater => {
                if let Some(first) = r.take() {
                    let rg = right.rest_of_group(first, None).await?;
                    right_only(spec, &plan, &right, rg, due_before, tally).await?;
                }
                r = right.next().await?;
            }
            Ordering::Equal => {
                if let (Some(lg), Some(first)) = (l.take(), r.take()) {
                    // The keys are equal: a later right row matches if its compared columns do.
                    let matches_left = |row: &Row| {
                        plan.compare
                            .iter()
                            .all(|(_, i, j)| lg.first[*i].same_as(&row[*j]))
                    };
                    let probe = probes.then_some(&matches_left as &(dyn Fn(&Row) -> bool + Sync));
                    let rg = right.rest_of_group(first, probe).await?;
                    // Most keys are one row a side that matches: nothing to report, and no
                    // call to make (its future, per key, showed in a 10M-row profile).
                    let one_to_one_match =
                        lg.count == 1 && rg.count == 1 && matches_left(&rg.first);
                    if !one_to_one_match {
                        both(spec, &plan, &left, lg, &right, rg, due_before, tally).await?;
                    }
                }
                l = left.next_group().await?;
                r = right.next().await?;
            }
        }
    }
    Ok(Read {
        rows_left: left.rows_read,
        rows_right: right.rows_read,
        null_keys: left.null_keys + right.null_keys,
    })
}

pub(super) fn plan(
    inv: &Invariant,
    spec: &ReconcileSpec,
    left: &[String],
    right: &[String],
) -> Result<Plan, EngineError> {
    let is_key = |c: &str| spec.key.iter().any(|k| k.as_str().eq_ignore_ascii_case(c));
    let is_time = |c: &str| {
        inv.time_column
            .as_ref()
            .is_some_and(|t| t.as_str().eq_ignore_ascii_case(c))
    };
    // An incremental reconcile's change columns say when a row was written, not what it
    // holds: like the time column, they are not compared unless listed.
    let is_change = |c: &str| {
        spec.incremental.as_ref().is_some_and(|inc| {
            [inc.left.as_ref(), inc.right.as_ref()]
                .into_iter()
                .flatten()
                .any(|k| k.as_str().eq_ignore_ascii_case(c))
        })
    };
    let compare = match &spec.compare {
        Some(cols) => cols
            .iter()
            .map(|c: &ColumnName| {
                let find = |side: &'static str, cols: &[String]| {
                    index_of(cols, c.as_str()).ok_or_else(|| EngineError::MissingCompareColumn {
                        column: c.to_string(),
                        side,
                        available: cols.join(", "),
                    })
                };
                Ok((c.to_string(), find("left", left)?, find("right", right)?))
            })
            .collect::<Result<Vec<_>, EngineError>>()?,
        None => left
            .iter()
            .enumerate()
            .filter(|(_, c)| !is_key(c) && !is_time(c) && !is_change(c))
            .filter_map(|(i, c)| index_of(right, c).map(|j| (c.clone(), i, j)))
            .collect(),
    };
    let time = |cols: &[String]| {
        inv.time_column
            .as_ref()
            .and_then(|t| index_of(cols, t.as_str()))
    };
    Ok(Plan {
        compare,
        left_time: time(left),
        right_time: time(right),
        left_whole: crate::engine::whole_columns(inv, crate::domain::Scope::Left, left),
        right_whole: crate::engine::whole_columns(inv, crate::domain::Scope::Right, right),
    })
}

/// Orders a left key against a right key, refusing keys of different types: engines order
/// text and numbers differently, so such a merge would report every row as missing.
fn cross_compare(
    spec: &ReconcileSpec,
    left: &Cursor,
    lrow: &[Value],
    right: &Cursor,
    rrow: &[Value],
) -> Result<Ordering, EngineError> {
    for ((k, &i), &j) in spec
        .key
        .iter()
        .zip(left.key_idx.iter())
        .zip(right.key_idx.iter())
    {
        let (a, b) = (&lrow[i], &rrow[j]);
        if !a.is_null() && !b.is_null() && a.class() != b.class() {
            let text_and_bytes = matches!(
                (a.class(), b.class()),
                (ValueClass::Text, ValueClass::Bytes) | (ValueClass::Bytes, ValueClass::Text)
            );
            return Err(EngineError::KeyTypeMismatch {
                column: k.to_string(),
                left: a.class().to_string(),
                right: b.class().to_string(),
                remedy: if text_and_bytes {
                    // Compared columns equal by their bytes; a key must also sort alike.
                    let bytes_side = if a.class() == ValueClass::Bytes {
                        "left"
                    } else {
                        "right"
                    };
                    format!(
                        "cast one side in its query; a MySQL/MariaDB text column in a binary collation such as utf8mb4_bin reads as bytes: on the {bytes_side}, `CAST(<column> AS CHAR) AS {k}` reads it as text"
                    )
                } else {
                    "cast one side in its query".to_owned()
                },
            });
        }
    }
    Ok(compare_keys(lrow, &left.key_idx, rrow, &right.key_idx))
}

fn key_of(cursor: &Cursor, row: &[Value]) -> Vec<Value> {
    cursor.key_idx.iter().map(|&i| row[i].clone()).collect()
}

fn time_of(row: &[Value], idx: Option<usize>) -> Option<DateTime<Utc>> {
    idx.and_then(|i| row[i].as_timestamp())
}

async fn left_only(
    spec: &ReconcileSpec,
    plan: &Plan,
    left: &Cursor,
    lg: Group,
    due_before: Option<DateTime<Utc>>,
    tally: &mut Tally<'_>,
) -> Result<(), EngineError> {
    let key = key_of(left, &lg.first);
    let event_at = time_of(&lg.first, plan.left_time);
    let evidence = row_json(left.columns(), &lg.first, &plan.left_whole);
    if lg.count > 1 {
        tally
            .report(Violation {
                kind: ViolationKind::Duplicate,
                key: key.clone(),
                discriminator: None,
                event_at,
                evidence: json!({"left_rows": lg.count, "right_rows": 0, "left": evidence}),
            })
            .await?;
    }
    if spec.expect.right_may_be_absent() {
        return Ok(());
    }
    if not_yet_due(plan.left_time.map(|i| &lg.first[i]), due_before) {
        tally.stats.not_yet_due += 1;
        return Ok(());
    }
    tally
        .report(Violation {
            kind: ViolationKind::Missing,
            key,
            discriminator: None,
            event_at,
            evidence: json!({ "left": evidence }),
        })
        .await
}

async fn right_only(
    spec: &ReconcileSpec,
    plan: &Plan,
    right: &Cursor,
    rg: Group,
    due_before: Option<DateTime<Utc>>,
    tally: &mut Tally<'_>,
) -> Result<(), EngineError> {
    let key = key_of(right, &rg.first);
    let event_at = time_of(&rg.first, plan.right_time);
    let evidence = row_json(right.columns(), &rg.first, &plan.right_whole);
    if rg.count > 1 && !spec.expect.right_may_repeat() {
        tally
            .report(Violation {
                kind: ViolationKind::Duplicate,
                key: key.clone(),
                discriminator: None,
                event_at,
                evidence: json!({"left_rows": 0, "right_rows": rg.count, "right": evidence}),
            })
            .await?;
    }
    if not_yet_due(plan.right_time.map(|i| &rg.first[i]), due_before) {
        tally.stats.not_yet_due += 1;
        return Ok(());
    }
    tally
        .report(Violation {
            kind: ViolationKind::Extra,
            key,
            discriminator: None,
            event_at,
            evidence: json!({ "right": evidence }),
        })
        .await
}

/// What a key with rows on both sides reports. (`merge` does not call it for a key whose one
/// row a side matches, which reports nothing: what this reports for such a key, `merge`
/// must report too.)
#[allow(clippy::too_many_arguments)]
async fn both(
    spec: &ReconcileSpec,
    plan: &Plan,
    left: &Cursor,
    lg: Group,
    right: &Cursor,
    rg: Group,
    due_before: Option<DateTime<Utc>>,
    tally: &mut Tally<'_>,
) -> Result<(), EngineError> {
    // The key is copied out only for a violation: most key groups match, and two
    // allocations per row showed in a 10M-row profile.
    let key = || key_of(left, &lg.first);
    let event_at = time_of(&lg.first, plan.left_time);
    let right_dup = rg.count > 1 && !spec.expect.right_may_repeat();
    if lg.count > 1 || right_dup {
        tally
            .report(Violation {
                kind: ViolationKind::Duplicate,
                key: key(),
                discriminator: None,
                event_at,
                evidence: json!({
                    "left_rows": lg.count,
                    "right_rows": rg.count,
                    "left": row_json(left.columns(), &lg.first, &plan.left_whole),
                    "right": row_json(right.columns(), &rg.first, &plan.right_whole),
                }),
            })
            .await?;
    }
    // Several rows on a side have no single counterpart to compare with; but where the right
    // rows may repeat (`at_least_one`), the key holds if one of them matches: the first is
    // compared below, and the others were probed as they were read.
    if lg.count > 1 || (rg.count > 1 && (right_dup || rg.later_matched)) || plan.compare.is_empty()
    {
        return Ok(());
    }
    let diff: Vec<serde_json::Value> = plan
        .compare
        .iter()
        .filter(|(_, i, j)| !lg.first[*i].same_as(&rg.first[*j]))
        .map(|(c, i, j)| {
            json!({
                "column": c,
                "left": lg.first[*i].to_evidence_json(),
                "right": rg.first[*j].to_evidence_json(),
            })
        })
        .collect();
    if diff.is_empty() {
        return Ok(());
    }
    let in_flight = not_yet_due(plan.left_time.map(|i| &lg.first[i]), due_before)
        || not_yet_due(plan.right_time.map(|i| &rg.first[i]), due_before);
    if in_flight {
        tally.stats.not_yet_due += 1;
        return Ok(());
    }
    tally
        .report(Violation {
            kind: ViolationKind::Mismatch,
            key: key(),
            discriminator: None,
            event_at,
            evidence: {
                let mut evidence = json!({
                    "left": row_json(left.columns(), &lg.first, &plan.left_whole),
                    "right": row_json(right.columns(), &rg.first, &plan.right_whole),
                    "diff": diff,
                });
                // (`at_least_one`: none of the key's right rows matched; the first is shown.)
                if rg.count > 1 {
                    evidence["right_rows"] = json!(rg.count);
                }
                evidence
            },
        })
        .await
}

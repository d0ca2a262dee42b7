//! `transitions`: a state history checked against the allowed state changes.

use serde_json::json;

use crate::domain::{TransitionsSpec, Value, Violation, ViolationKind};
use crate::source::{Needed, ReadRequest, Sources};

use super::KeyFilter;
use super::cursor::{Cursor, compare_keys};
use super::{EngineError, Tally, key_text};

pub(super) async fn run(
    spec: &TransitionsSpec,
    sources: &Sources,
    filter: &[KeyFilter],
    tally: &mut Tally<'_>,
) -> Result<(), EngineError> {
    // A database gives rows of one entity at the same time in whatever order its plan
    // makes, which may change between runs (a violation that opens, resolves and reopens by
    // itself): there ties are taken in the order of their state, so every run reads one
    // history alike. A stream, a log or an API keeps its rows' own order for ties (the sort is
    // stable), which says which came first.
    let source = sources.get(&spec.side.source)?;
    let mut order_by = spec.key.clone();
    order_by.push(spec.at.clone());
    if matches!(source.class(), crate::config::SourceClass::Sql(_)) {
        order_by.push(spec.state.clone());
    }
    let stream = source
        .read(ReadRequest {
            query: spec.side.query.clone(),
            needed: vec![Needed {
                column: spec.state.clone(),
                role: "the state column",
            }],
            order_by,
            filter: filter.to_vec(),
            digest_long_except: None,
            key_ranges: None,
            keys: None,
            changed_since: None,
        })
        .await?;
    let key_idx: Vec<usize> = spec
        .key
        .iter()
        .map(|k| stream.index_of(k.as_str()).unwrap_or(0))
        .collect();
    let state_idx = stream.index_of(spec.state.as_str()).unwrap_or(0);
    let at_idx = stream.index_of(spec.at.as_str()).unwrap_or(0);
    let mut history_idx = key_idx.clone();
    history_idx.push(at_idx);
    // Rows with a NULL key or a NULL time are skipped (and counted) by the cursor.
    let mut cursor = Cursor::new(stream, history_idx.clone(), "history");

    let mut previous: Option<Vec<Value>> = None;
    while let Some(row) = cursor.next().await? {
        let same_entity = match &previous {
            Some(p) => match compare_keys(p, &history_idx, &row, &history_idx) {
                std::cmp::Ordering::Greater => {
                    let pk: Vec<Value> = history_idx.iter().map(|&i| p[i].clone()).collect();
                    let ck: Vec<Value> = history_idx.iter().map(|&i| row[i].clone()).collect();
                    return Err(EngineError::OutOfOrder {
                        side: "history",
                        row: cursor.rows_read,
                        previous: key_text(&pk),
                        current: key_text(&ck),
                    });
                }
                _ => compare_keys(p, &key_idx, &row, &key_idx) == std::cmp::Ordering::Equal,
            },
            None => false,
        };
        let to = state_text(&row[state_idx]);
        let from = if same_entity {
            previous.as_ref().map(|p| state_text(&p[state_idx]))
        } else {
            None
        };
        let problem = match &from {
            _ if !spec.is_known_state(&to) => {
                Some(format!("`{}` is not a known state", shown(&to)))
            }
            Some(f) if !spec.allowed.get(f).is_some_and(|next| next.contains(&to)) => {
                Some(format!("`{}` may not change to `{}`", shown(f), shown(&to)))
            }
            None => match &spec.initial {
                Some(initial) if !initial.contains(&to) => {
                    Some(format!("`{}` is not an initial state", shown(&to)))
                }
                _ => None,
            },
            _ => None,
        };
        if let Some(problem) = problem {
            // Declared states are short; a state value that is not (a whole document in the
            // state column, say) is shown by its start, and told apart by its digest.
            let (to, from) = (shown(&to), from.as_deref().map(shown));
            let at = row[at_idx].to_evidence_json();
            let previous_at = from
                .as_ref()
                .and_then(|_| previous.as_ref().map(|p| p[at_idx].to_evidence_json()));
            tally
                .report(Violation {
                    kind: ViolationKind::Transition,
                    key: key_idx.iter().map(|&i| row[i].clone()).collect(),
                    discriminator: Some(format!("{}->{to}@{at}", from.as_deref().unwrap_or(""))),
                    event_at: row[at_idx].as_timestamp(),
                    evidence: json!({
                        "from": from,
                        "to": to,
                        "at": at,
                        "previous_at": previous_at,
                        "problem": problem,
                    }),
                })
                .await?;
        }
        previous = Some(row);
    }
    tally.stats.rows_left = cursor.rows_read;
    tally.stats.null_keys = cursor.null_keys;
    Ok(())
}

/// A state as evidence shows it: whole when short, else its start, length and digest.
fn shown(state: &str) -> String {
    const SHOWN: usize = 256;
    if state.len() <= SHOWN {
        return state.to_owned();
    }
    use sha2::{Digest, Sha256};
    format!(
        "{}… ({} bytes, sha256 {})",
        &state[..state.floor_char_boundary(SHOWN)],
        state.len(),
        hex::encode(Sha256::digest(state.as_bytes()))
    )
}

fn state_text(v: &Value) -> String {
    match v {
        Value::Text(s) => s.to_string(),
        // A MySQL/MariaDB text column in a binary collation (`utf8mb4_bin`) reads as bytes:
        // its state is the text they hold.
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => s.to_owned(),
            Err(_) => v.to_string(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_read_as_bytes_is_the_text_they_hold() {
        assert_eq!(state_text(&Value::Bytes(b"paid".to_vec())), "paid");
        assert_eq!(state_text(&Value::Text("paid".into())), "paid");
        assert_eq!(state_text(&Value::Bytes(vec![0xff])), "\\xff");
    }
}

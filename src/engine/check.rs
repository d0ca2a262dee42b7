//! `check`: every row the query returns is a violation.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::domain::{CheckSpec, Invariant, Violation, ViolationKind};
use crate::source::{Needed, ReadRequest, Sources};

use super::KeyFilter;
use super::{EngineError, Tally, not_yet_due, row_json};

pub(super) async fn run(
    inv: &Invariant,
    spec: &CheckSpec,
    sources: &Sources,
    due_before: Option<DateTime<Utc>>,
    filter: &[KeyFilter],
    tally: &mut Tally<'_>,
) -> Result<(), EngineError> {
    let mut needed: Vec<Needed> = spec
        .key
        .iter()
        .map(|k| Needed {
            column: k.clone(),
            role: "a key",
        })
        .collect();
    if let Some(t) = &inv.time_column {
        needed.push(Needed {
            column: t.clone(),
            role: "the time column",
        });
    }
    let mut stream = sources
        .get(&spec.side.source)?
        .read(ReadRequest {
            query: spec.side.query.clone(),
            needed,
            order_by: Vec::new(),
            filter: filter.to_vec(),
            digest_long_except: Some(inv.template_fields(crate::domain::Scope::Row)),
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
    let time_idx = inv
        .time_column
        .as_ref()
        .and_then(|t| stream.index_of(t.as_str()));
    let columns = stream.columns().to_vec();
    let whole = super::whole_columns(inv, crate::domain::Scope::Row, &columns);
    while let Some(batch) = stream.next_batch().await {
        for row in batch? {
            tally.stats.rows_left += 1;
            let time = time_idx.map(|i| &row[i]);
            if not_yet_due(time, due_before) {
                tally.stats.not_yet_due += 1;
                continue;
            }
            tally
                .report(Violation {
                    kind: ViolationKind::Check,
                    key: key_idx.iter().map(|&i| row[i].clone()).collect(),
                    discriminator: None,
                    event_at: time.and_then(|t| t.as_timestamp()),
                    evidence: json!({ "row": row_json(&columns, &row, &whole) }),
                })
                .await?;
        }
    }
    Ok(())
}

//! Is the work of an action done already? The violation re-checked against the sources for
//! its key alone, and, for a replayed event, the downstream's `processed` lookup. Dry runs,
//! applies and verification all ask here, so they all judge the same way.

use chrono::Utc;

use crate::domain::{CheckSpec, Invariant, InvariantSpec, ReplaySpec};
use crate::engine::{Collect, EngineError, KeyFilter, evaluate_keys};
use crate::source::Sources;

/// A re-check that could not be made (the source failed, say): the action is not acted on.
#[derive(Debug, thiserror::Error)]
pub enum RecheckError {
    #[error("re-check failed: {0}")]
    Violation(#[source] EngineError),
    #[error("the processed lookup failed: {0}")]
    Processed(#[source] EngineError),
}

/// The filter selecting one violation's key: the invariant's key columns and the stored key's
/// values.
pub fn key_filter(invariant: &Invariant, key: &serde_json::Value) -> Vec<KeyFilter> {
    invariant
        .key()
        .iter()
        .cloned()
        .zip(super::key_values(key))
        .collect()
}

/// Whether the violation with this `fingerprint` still holds, evaluated now for its `key`
/// only.
pub async fn still_holds(
    invariant: &Invariant,
    sources: &Sources,
    key: &serde_json::Value,
    fingerprint: &str,
) -> Result<bool, RecheckError> {
    let mut found = Collect::default();
    evaluate_keys(
        invariant,
        sources,
        Utc::now(),
        &key_filter(invariant, key),
        &mut found,
    )
    .await
    .map_err(RecheckError::Violation)?;
    Ok(found
        .0
        .iter()
        .any(|v| v.fingerprint(&invariant.name).as_str() == fingerprint))
}

/// Whether the downstream already processed the event with this key: the `processed`
/// lookup has a row for it, or its violation (`fingerprint`) no longer holds. `Some`: why.
pub async fn already_processed(
    invariant: &Invariant,
    spec: &ReplaySpec,
    sources: &Sources,
    key: &serde_json::Value,
    fingerprint: &str,
) -> Result<Option<String>, RecheckError> {
    if let Some(lookup) = &spec.processed {
        let probe = Invariant {
            spec: InvariantSpec::Check(CheckSpec {
                side: lookup.clone(),
                key: invariant.key().to_vec(),
            }),
            time_column: None,
            grace: None,
            ..invariant.clone()
        };
        let mut found = Collect::default();
        evaluate_keys(
            &probe,
            sources,
            Utc::now(),
            &key_filter(invariant, key),
            &mut found,
        )
        .await
        .map_err(RecheckError::Processed)?;
        if !found.0.is_empty() {
            return Ok(Some("the downstream's processed lookup has it".into()));
        }
    }
    if !still_holds(invariant, sources, key, fingerprint).await? {
        return Ok(Some(
            "the downstream has it now (the violation no longer holds)".into(),
        ));
    }
    Ok(None)
}

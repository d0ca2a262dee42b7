//! What makes a plan the plan that was reviewed: each action's idempotency key, the content
//! hash over every action and the invariant's definition, and the hash a reviewer gives back.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::domain::ActionSpec;
use crate::domain::PlanKind;
use crate::store::{ActionRecord, NewAction, PlanRecord};

/// The stable idempotency key of compensating one violation with one concrete action: the same
/// action for the same violation has the same key in every plan, so it is applied once.
pub fn idempotency_key(invariant: &str, fingerprint: &str, spec: &ActionSpec) -> String {
    let mut h = Sha256::new();
    h.update(invariant);
    h.update([0]);
    h.update(fingerprint);
    h.update([0]);
    h.update(canonical(&serde_json::to_value(spec).unwrap_or_default()));
    format!("trueup-{}", hex::encode(&h.finalize()[..16]))
}

/// JSON text with object keys sorted at every level: the same value gives the same text
/// whichever store kept it (PostgreSQL's JSONB reorders keys).
pub(super) fn canonical(v: &serde_json::Value) -> String {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<(&String, &serde_json::Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                serde_json::Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sorted(v)))
                        .collect(),
                )
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(sorted).collect())
            }
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

/// What the content hash of a plan covers for one action.
pub struct HashedAction<'a> {
    pub fingerprint: &'a str,
    pub violation_kind: &'a str,
    pub key: &'a serde_json::Value,
    pub spec: &'a ActionSpec,
    pub idempotency_key: &'a str,
    pub partition: &'a str,
    pub event_at: Option<DateTime<Utc>>,
}

impl<'a> From<&'a NewAction> for HashedAction<'a> {
    fn from(a: &'a NewAction) -> Self {
        Self {
            fingerprint: &a.fingerprint,
            violation_kind: a.violation_kind.as_str(),
            key: &a.key,
            spec: &a.spec,
            idempotency_key: &a.idempotency_key,
            partition: &a.partition,
            event_at: a.event_at,
        }
    }
}

impl<'a> From<&'a ActionRecord> for HashedAction<'a> {
    fn from(a: &'a ActionRecord) -> Self {
        Self {
            fingerprint: &a.fingerprint,
            violation_kind: &a.violation_kind,
            key: &a.key,
            spec: &a.spec,
            idempotency_key: &a.idempotency_key,
            partition: &a.partition,
            event_at: a.event_at,
        }
    }
}

/// The content hash of a plan: its invariant, definition, kind and purpose (`meta`: a
/// replay's window), and its actions in order.
pub fn content_hash<'a>(
    invariant: &str,
    definition_hash: &str,
    kind: PlanKind,
    meta: &serde_json::Value,
    actions: impl Iterator<Item = HashedAction<'a>>,
) -> String {
    let mut h = Sha256::new();
    h.update(invariant);
    h.update([0]);
    h.update(definition_hash);
    h.update([0]);
    h.update(canonical(&serde_json::json!([kind.as_str(), meta])));
    for (seq, a) in actions.enumerate() {
        let spec = serde_json::to_value(a.spec).unwrap_or_default();
        let at = a
            .event_at
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        let line = serde_json::json!([
            seq + 1,
            a.fingerprint,
            a.violation_kind,
            a.key,
            spec,
            a.idempotency_key,
            a.partition,
            at
        ]);
        h.update([0]);
        h.update(canonical(&line));
    }
    hex::encode(h.finalize())
}

pub(super) fn stored_content_hash(plan: &PlanRecord, actions: &[ActionRecord]) -> String {
    content_hash(
        &plan.invariant,
        &plan.definition_hash,
        plan.kind,
        &plan.meta,
        actions.iter().map(HashedAction::from),
    )
}

pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// Characters of a content hash a person must type at least, when a prefix is accepted.
pub const MIN_HASH_PREFIX: usize = 12;

pub(super) const HASH_LEN: usize = 64;

/// The content hash an approver says they reviewed. An approval is bound to it, so it is
/// parsed once, strictly: the whole SHA-256 in hex from the API and the console, where it is
/// copied by a program or a form; a prefix of at least [`MIN_HASH_PREFIX`] characters from
/// the CLI, where a person types it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewedHash(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("the content hash is empty")]
    Empty,
    #[error("the content hash has `{bad}`, which is not a hexadecimal digit")]
    NotHex { bad: char },
    #[error("the content hash has {len} characters; the whole hash has {HASH_LEN}")]
    NotWhole { len: usize },
    #[error(
        "the content hash has {len} characters; give at least {MIN_HASH_PREFIX} (the whole hash has {HASH_LEN})"
    )]
    TooShort { len: usize },
}

impl ReviewedHash {
    fn digits(raw: &str) -> Result<String, HashError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(HashError::Empty);
        }
        if let Some(bad) = raw.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(HashError::NotHex { bad });
        }
        Ok(raw.to_ascii_lowercase())
    }

    /// The whole hash, exactly.
    pub fn exact(raw: &str) -> Result<Self, HashError> {
        let digits = Self::digits(raw)?;
        if digits.len() != HASH_LEN {
            return Err(HashError::NotWhole { len: digits.len() });
        }
        Ok(Self(digits))
    }

    /// The whole hash or a prefix long enough to be unique among plans in practice.
    pub fn prefix(raw: &str) -> Result<Self, HashError> {
        let digits = Self::digits(raw)?;
        if digits.len() < MIN_HASH_PREFIX || digits.len() > HASH_LEN {
            return Err(HashError::TooShort { len: digits.len() });
        }
        Ok(Self(digits))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(super) fn matches(&self, content_hash: &str) -> bool {
        content_hash.starts_with(&self.0)
    }
}

use std::fmt;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{InvariantName, Value};

/// What kind of disagreement a violation is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// A left (upstream) key with no right (downstream) row.
    Missing,
    /// A right key with no left row.
    Extra,
    /// A key present more times than the invariant's `expect` allows.
    Duplicate,
    /// Both sides have the key but compared columns differ.
    Mismatch,
    /// A row returned by a `check` query.
    Check,
    /// A state change not in a `transitions` invariant's allowed map.
    Transition,
}

impl ViolationKind {
    pub const ALL: [ViolationKind; 6] = [
        ViolationKind::Missing,
        ViolationKind::Extra,
        ViolationKind::Duplicate,
        ViolationKind::Mismatch,
        ViolationKind::Check,
        ViolationKind::Transition,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::Missing => "missing",
            ViolationKind::Extra => "extra",
            ViolationKind::Duplicate => "duplicate",
            ViolationKind::Mismatch => "mismatch",
            ViolationKind::Check => "check",
            ViolationKind::Transition => "transition",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One violation as an evaluation observed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub kind: ViolationKind,
    /// The key values, in the invariant's key order.
    pub key: Vec<Value>,
    /// Distinguishes several violations of one kind on one key (a transitions invariant can
    /// see several illegal changes of the same entity).
    pub discriminator: Option<String>,
    /// When the business event happened (the invariant's time column), if known.
    pub event_at: Option<DateTime<Utc>>,
    /// What was seen: row values per side, the column diff, counts.
    pub evidence: serde_json::Value,
}

impl Violation {
    pub fn key_json(&self) -> serde_json::Value {
        serde_json::Value::Array(self.key.iter().map(Value::to_canonical_json).collect())
    }

    pub fn fingerprint(&self, invariant: &InvariantName) -> Fingerprint {
        Fingerprint::of(
            invariant,
            self.kind,
            &self.key_json(),
            self.discriminator.as_deref(),
        )
    }
}

/// Stable identity of a violation across runs: invariant + kind + key (+ discriminator).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(String);

impl Fingerprint {
    pub fn of(
        invariant: &InvariantName,
        kind: ViolationKind,
        key_json: &serde_json::Value,
        discriminator: Option<&str>,
    ) -> Self {
        let mut h = Sha256::new();
        h.update(invariant.as_str());
        h.update([0]);
        h.update(kind.as_str());
        h.update([0]);
        h.update(key_json.to_string());
        if let Some(d) = discriminator {
            h.update([0]);
            h.update(d);
        }
        Self(hex::encode(&h.finalize()[..16]))
    }

    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a violation is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ViolationStatus {
    /// Seen, and seen again by every completed run since.
    Open,
    /// A completed run no longer saw it.
    Resolved,
    /// Seen again after it had been resolved.
    Reopened,
}

impl ViolationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationStatus::Open => "open",
            ViolationStatus::Resolved => "resolved",
            ViolationStatus::Reopened => "reopened",
        }
    }

    /// The status as the store wrote it.
    pub fn parse(raw: &str) -> Self {
        match raw {
            "resolved" => ViolationStatus::Resolved,
            "reopened" => ViolationStatus::Reopened,
            _ => ViolationStatus::Open,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    #[test]
    fn the_same_key_read_from_two_engines_has_one_fingerprint() {
        let inv = InvariantName::parse("payments-ledger").unwrap();
        let from_pg = Violation {
            kind: ViolationKind::Missing,
            key: vec![Value::Decimal(Decimal::new(4200, 2))],
            discriminator: None,
            event_at: None,
            evidence: serde_json::Value::Null,
        };
        let from_mysql = Violation {
            key: vec![Value::Int(42)],
            ..from_pg.clone()
        };
        assert_eq!(from_pg.fingerprint(&inv), from_mysql.fingerprint(&inv));
    }

    #[test]
    fn kind_and_discriminator_are_part_of_the_identity() {
        let inv = InvariantName::parse("x").unwrap();
        let key = serde_json::json!([1]);
        let a = Fingerprint::of(&inv, ViolationKind::Missing, &key, None);
        let b = Fingerprint::of(&inv, ViolationKind::Extra, &key, None);
        let c = Fingerprint::of(&inv, ViolationKind::Missing, &key, Some("x"));
        assert_ne!(a, b);
        assert_ne!(a, c);
    }
}

//! Incidents: the phases of a response (an incident's name is in `name.rs`).

use std::fmt;

/// Whether an incident is still being worked on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum IncidentState {
    Open,
    Closed,
}

/// The phases of an incident response, in their usual order.
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
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The damage stops growing.
    Contain,
    /// The failed system works again.
    Restore,
    /// What was lost or wrong is repaired (plans, replays).
    Reconcile,
    /// Invariants re-checked and holding.
    Verify,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Phase::Contain,
        Phase::Restore,
        Phase::Reconcile,
        Phase::Verify,
    ];
    pub const NAMES: &'static str = "contain, restore, reconcile or verify";

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == raw)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Contain => "contain",
            Phase::Restore => "restore",
            Phase::Reconcile => "reconcile",
            Phase::Verify => "verify",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IncidentName;

    #[test]
    fn incident_names_and_phases_parse_with_reasons() {
        assert!(IncidentName::parse("2026-11-25-billing-outage").is_ok());
        let err = IncidentName::parse("Billing outage").unwrap_err();
        assert!(
            err.to_string().contains("` `") || err.to_string().contains("`B`"),
            "{err}"
        );
        assert!(IncidentName::parse("").is_err());
        assert_eq!(Phase::parse("reconcile"), Some(Phase::Reconcile));
        assert_eq!(Phase::parse("fix"), None);
    }
}
